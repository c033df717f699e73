/* SPDX-License-Identifier: MIT */
/*
 * detect.h - cloud = auto: tell which cloud this machine runs on, first from
 * its DMI data (/sys/class/dmi/id), then, when DMI names no cloud, from short
 * parallel probes of each cloud's metadata service. It only reads the DMI
 * files and sends probe requests through http; it never picks or starts a
 * provider, never logs above debug, and keeps no state beyond one probe
 * round. The caller (manager) logs what was found and why.
 *
 * How manager uses it, for [daemon] cloud = auto without --fake-metadata:
 *
 *  1. r = detect_from_dmi(detect_dmi_root(), &cloud, why, sizeof(why)).
 *     detect_dmi_root() is $SPOTWATCHD_DMI_ROOT when set and not empty (the
 *     test hook: tests point it at a fixture directory), else
 *     /sys/class/dmi/id. r > 0: done, @cloud and @why are the answer. r == 0
 *     (nothing matched) or r < 0 (no DMI data, e.g. in a container): keep
 *     @why (or "cannot read DMI data in 'DIR': ERROR") for the failure
 *     message and go on to 2.
 *  2. urls[k] = config->metadata_url when it is set (every cloud is probed at
 *     that one address; this is how tests aim the probes at a loopback
 *     fake), else provider_default_url(k), for every k after CLOUD_AUTO.
 *     detect_probe_start(loop, http, urls, config->probe_timeout_usec, done,
 *     ...) and turn the loop until done() has been called.
 *  3. Log at info level exactly "cloud = auto: <cloud> (<why>)", e.g.
 *     "cloud = auto: aws (sys_vendor is 'Amazon EC2')"; when neither step
 *     found a cloud, log an error "cloud = auto: could not tell the cloud:
 *     <dmi why>; <probe why>" and fail start-up (exit status 1).
 *
 * Detection runs once, at start-up; a reload that keeps cloud = auto keeps
 * the cloud found then.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "event.h"
#include "http.h"
#include "shared/macro.h"

#define DETECT_DMI_ROOT_DEFAULT "/sys/class/dmi/id"
#define DETECT_DMI_ROOT_ENV "SPOTWATCHD_DMI_ROOT"

/** detect_dmi_root() - $SPOTWATCHD_DMI_ROOT if set and not empty, else DETECT_DMI_ROOT_DEFAULT. */
const char *detect_dmi_root(void);

/**
 * detect_from_dmi() - decide the cloud from the DMI files in @dmi_root
 * (sys_vendor, product_name, product_version, bios_vendor, bios_version,
 * chassis_asset_tag, chassis_vendor, board_vendor; each may be missing or
 * unreadable; at most 256 bytes of each are read, the first line is kept,
 * surrounding blanks are trimmed and unprintable bytes shown as '?').
 *
 * Rules, first match wins: AWS when sys_vendor, bios_vendor, board_vendor,
 * chassis_vendor or chassis_asset_tag is "Amazon EC2" (Nitro), or
 * sys_vendor is "Xen" and bios_version or product_version contains
 * "amazon" (older Xen instances); GCP when sys_vendor, product_name,
 * bios_vendor, board_vendor or chassis_vendor is "Google" / "Google Compute
 * Engine"; Azure when chassis_asset_tag is Azure's
 * "7783-7084-3265-9085-8269-3286-77" (plain Hyper-V, "Microsoft
 * Corporation" without that tag, is not Azure); Alibaba when sys_vendor or
 * chassis_vendor is "Alibaba Cloud" or product_name "Alibaba Cloud ECS".
 *
 * Returns 1 when a cloud was found: *@ret_cloud is it and @ret_why names the
 * file and value ("sys_vendor is 'Amazon EC2'"). Returns 0 when nothing
 * matched: *@ret_cloud is _CLOUD_INVALID and @ret_why says what was seen.
 * On failure returns -errno and writes nothing: @dmi_root cannot be opened
 * as a directory (-ENOENT, -ENOTDIR, -EACCES, ...), or none of the files
 * could be read and at least one failed for another reason than not
 * existing (that error; -EINVAL for a file that is not a regular file).
 * @ret_why may be NULL (then @why_size is ignored); it is always
 * NUL-terminated and cut with "..." when too small.
 */
int detect_from_dmi(const char *dmi_root, CloudKind *ret_cloud, char *ret_why, size_t why_size);

typedef struct DetectProbe DetectProbe;

/*
 * Called once per probe round, from the loop: @cloud is the first cloud
 * whose metadata service answered the way only that cloud's does, with @why
 * naming the request and the answer ("probe: PUT
 * http://169.254.169.254/latest/api/token answered 200 with an IMDSv2
 * session token"); or _CLOUD_INVALID once every probe failed, with @why
 * listing each cloud's failure. @why is valid until the callback returns.
 * The callback may call detect_probe_free(@p).
 */
typedef void (*DetectDoneFn)(DetectProbe *p, CloudKind cloud, const char *why, void *userdata);

/**
 * detect_probe_start() - send one short request to each cloud's metadata
 * service in parallel, all through @http:
 *
 *   aws      PUT {base}/latest/api/token with X-aws-ec2-metadata-token-ttl-seconds;
 *            yes on 200 with a token and the TTL header in the answer
 *   gcp      GET {base}/computeMetadata/v1/instance/id with Metadata-Flavor: Google;
 *            yes on 200 with "Metadata-Flavor: Google" in the answer
 *   azure    GET {base}/metadata/instance/compute/vmId?api-version=2021-02-01&format=text
 *            with Metadata: true; yes on 200 with a UUID
 *   alibaba  GET {base}/latest/meta-data/instance-id; yes on 200 with an id
 *            "i-..." that is not shaped like an AWS one (AWS serves the same
 *            path when IMDSv1 is on)
 *
 * AWS, GCP and Azure share 169.254.169.254, so the shape of the answer
 * decides, never the address. @urls is indexed by CloudKind: the base URL
 * ("http://169.254.169.254", trailing '/' ignored) or NULL to skip that
 * cloud; urls[CLOUD_AUTO] is ignored. Each request is bounded by
 * @timeout_usec (0: http's default of 5 s). @done is called exactly once
 * (see DetectDoneFn), never from inside this call, and not at all if the
 * round is freed first or @http is closed before it ends.
 *
 * Returns 0 and the round in *@ret; -EINVAL when no URL is given, -EINVAL
 * for a URL http refuses, -ESHUTDOWN after http_close(), -ENOMEM, -EIO.
 */
int detect_probe_start(uv_loop_t *loop, Http *http, const char *const urls[_CLOUD_MAX], uint64_t timeout_usec,
                       DetectDoneFn done, void *userdata, DetectProbe **ret);

/**
 * detect_probe_free() - cancel what still runs (without calling back) and
 * free @p at once; it owns no uv handle. NULL-safe; allowed inside @done.
 */
DetectProbe *detect_probe_free(DetectProbe *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(DetectProbe *, detect_probe_free);
