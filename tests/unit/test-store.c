/* SPDX-License-Identifier: MIT */
/*
 * test-store.c - what the store backends share (store.c): CRC-32C against
 * the standard check values (hardware and table paths agree), the encoders,
 * the part size rule, backoff bounds, object URLs, and hashing a range of a
 * real file on libuv's threadpool (MD5, SHA-256 and CRC-32C against OpenSSL
 * one-shot digests; a short file; freeing a hash still queued).
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/macro.h"
#include "store-internal.h"
#include "tests.h"

#define MIB (1024U * 1024U)

static void test_crc32c(void) {
        static const char check[] = "123456789";
        uint8_t zeros[32] = {}, ones[32];
        uint8_t *big;
        uint32_t whole, parts = 0;

        /* RFC 3720 B.4 and the usual "check" value. */
        ASSERT_EQ(crc32c_update(0, check, 9), 0xE3069283U);
        ASSERT_EQ(crc32c_update(0, zeros, 32), 0x8A9136AAU);
        memset(ones, 0xff, sizeof(ones));
        ASSERT_EQ(crc32c_update(0, ones, 32), 0x62A8AB43U);
        ASSERT_EQ(crc32c_update(0, "", 0), 0U);

        /* Incremental == one shot, across odd split points (the 8-byte loop and the tail). */
        big = malloc(MIB + 13);
        ASSERT_TRUE(big);
        for (size_t i = 0; i < MIB + 13; i++)
                big[i] = (uint8_t) (i * 2654435761U >> 13);
        whole = crc32c_update(0, big, MIB + 13);
        for (size_t off = 0, step = 1; off < MIB + 13; step = step * 3 + 1) {
                size_t n = MIN(step, MIB + 13 - off);

                parts = crc32c_update(parts, big + off, n);
                off += n;
        }
        ASSERT_EQ(whole, parts);
        free(big);
}

static void test_encoders(void) {
        char out[64], *s;
        uint8_t *dec = NULL;
        size_t n = 0;

        store_base64((const uint8_t *) "\x01\x02\x03\x04", 4, out);
        ASSERT_STREQ(out, "AQIDBA==");
        ASSERT_OK(store_base64_decode("AQIDBA==", &dec, &n));
        ASSERT_EQ(n, 4U);
        ASSERT_TRUE(memcmp(dec, "\x01\x02\x03\x04", 4) == 0);
        free(dec);
        ASSERT_ERR(store_base64_decode("AQID*A==", &dec, &n), EINVAL);
        ASSERT_ERR(store_base64_decode("AQI", &dec, &n), EINVAL);
        ASSERT_ERR(store_base64_decode("", &dec, &n), EINVAL);

        store_hex((const uint8_t *) "\x00\xab\xff", 3, out);
        ASSERT_STREQ(out, "00abff");

        s = store_pct_encode("run 1/a+b=c&d~e_f.g-h/é", true);
        ASSERT_STREQ(s, "run%201/a%2Bb%3Dc%26d~e_f.g-h/%C3%A9");
        free(s);
        s = store_pct_encode("2~abc/def=", false);
        ASSERT_STREQ(s, "2~abc%2Fdef%3D");
        free(s);
}

static void test_part_size(void) {
        UploadConfig u = { .scheme = UPLOAD_S3, .bucket = (char *) "b" };

        ASSERT_U64_EQ(store_part_size(&u, 0), 8 * MIB);
        ASSERT_U64_EQ(store_part_size(&u, 3ULL * 1024 * MIB), 8 * MIB);
        /* 10000 parts of 8 MiB = 78 GiB: above that the part size doubles. */
        ASSERT_U64_EQ(store_part_size(&u, 10000ULL * 8 * MIB), 8 * MIB);
        ASSERT_U64_EQ(store_part_size(&u, 10000ULL * 8 * MIB + 1), 16 * MIB);
        ASSERT_U64_EQ(store_part_size(&u, 5ULL * 1024 * 1024 * MIB), 1024 * MIB); /* 5 TiB */
        u.part_size = 64 * MIB;
        ASSERT_U64_EQ(store_part_size(&u, 1 * MIB), 64 * MIB);
        /* Even a configured size grows past 10000 parts. */
        ASSERT_U64_EQ(store_part_size(&u, 10000ULL * 64 * MIB + 1), 128 * MIB);
}

static void test_backoff(void) {
        for (unsigned a = 1; a <= 12; a++)
                for (unsigned k = 0; k < 50; k++) {
                        uint64_t d = store_backoff_usec(a), base = 200 * USEC_PER_MSEC;

                        for (unsigned i = 1; i < a && base < 5 * USEC_PER_SEC; i++)
                                base *= 2;
                        base = MIN(base, 5 * USEC_PER_SEC);
                        ASSERT_TRUE(d >= base / 2 && d <= base);
                }
}

static void test_object_url(void) {
        UploadConfig s3 = { .scheme = UPLOAD_S3, .bucket = (char *) "bkt" };
        UploadConfig az = { .scheme = UPLOAD_AZ, .account = (char *) "acct", .bucket = (char *) "cont" };
        char *u;

        u = store_object_url(&s3, "run 1/model.pt");
        ASSERT_STREQ(u, "s3://bkt/run%201/model.pt");
        free(u);
        u = store_object_url(&az, "p/x");
        ASSERT_STREQ(u, "az://acct/cont/p/x");
        free(u);
}

static void test_xml_find(void) {
        static const char *const names[] = { "UploadId", "Code" };
        static const char ok[] = "<?xml version=\"1.0\"?><InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws."
                                 "com/doc/2006-03-01/\"><Bucket>b</Bucket><Nested><UploadId>no</UploadId></Nested>"
                                 "<UploadId>2~abc</UploadId></InitiateMultipartUploadResult>";
        char *v[2];
        char q[16];

        ASSERT_OK(store_xml_find(ok, strlen(ok), names, v, 2));
        ASSERT_STREQ(v[0], "2~abc"); /* the root's child, not the nested one */
        ASSERT_TRUE(v[1] == NULL);
        free(v[0]);
        /* Truncated or not XML: nothing, even what was read before the break. */
        ASSERT_ERR(store_xml_find("<Error><Code>Slow", 17, names, v, 2), EBADMSG);
        ASSERT_TRUE(v[0] == NULL && v[1] == NULL);
        ASSERT_ERR(store_xml_find("", 0, names, v, 2), EBADMSG);
        ASSERT_ERR(store_xml_find("HTTP/1.1 500", 12, names, v, 2), EBADMSG);

        store_strip_quotes("\"abc-3\"", q, sizeof(q));
        ASSERT_STREQ(q, "abc-3");
        store_strip_quotes(NULL, q, sizeof(q));
        ASSERT_STREQ(q, "");
        store_strip_quotes("0x8D0123456789ABCDEF", q, 8);
        ASSERT_STREQ(q, "0x8D012");
}

/* ---- hashing on the threadpool --------------------------------------------- */

typedef struct HashRun {
        int error;
        StoreDigest d;
        bool called;
} HashRun;

static void on_hashed(StoreHash *h, int error, const StoreDigest *d, void *userdata) {
        HashRun *r = userdata;

        r->called = true;
        r->error = error;
        if (d)
                r->d = *d;
}

static void digest_of(const EVP_MD *md, const uint8_t *p, size_t n, uint8_t *out) {
        unsigned len = 0;

        ASSERT_EQ(EVP_Digest(p, n, out, &len, md, NULL), 1);
}

static void test_hash(void) {
        char path[] = "/tmp/test-store-XXXXXX";
        const size_t size = 3 * MIB + 777;
        uint8_t *data, want[32];
        uv_loop_t loop;
        int fd;

        fd = mkstemp(path);
        ASSERT_TRUE(fd >= 0);
        ASSERT_OK(unlink(path));
        data = malloc(size);
        ASSERT_TRUE(data);
        for (size_t i = 0; i < size; i++)
                data[i] = (uint8_t) (i * 7 + (i >> 11));
        ASSERT_EQ(write(fd, data, size), (ssize_t) size);
        ASSERT_OK(uv_loop_init(&loop));

        for (UploadChecksum algo = 0; algo < _UPLOAD_CHECKSUM_MAX; algo++) {
                HashRun r = {};
                StoreHash *h = NULL;

                /* A range in the middle, not aligned to the 1 MiB slices. */
                ASSERT_OK(store_hash_start(&loop, fd, 12345, 2 * MIB + 99, algo, on_hashed, &r, &h));
                ASSERT_FALSE(r.called);
                ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
                ASSERT_TRUE(r.called);
                ASSERT_OK(r.error);
                switch (algo) {
                case UPLOAD_CHECKSUM_MD5:
                        digest_of(EVP_md5(), data + 12345, 2 * MIB + 99, want);
                        ASSERT_TRUE(memcmp(want, r.d.md5, 16) == 0);
                        break;
                case UPLOAD_CHECKSUM_SHA256:
                        digest_of(EVP_sha256(), data + 12345, 2 * MIB + 99, want);
                        ASSERT_TRUE(memcmp(want, r.d.sha256, 32) == 0);
                        break;
                case UPLOAD_CHECKSUM_CRC32C:
                        ASSERT_EQ(r.d.crc32c, crc32c_update(0, data + 12345, 2 * MIB + 99));
                        break;
                default:
                        break;
                }
        }

        /* Past the end of the file: -ENODATA, not a digest of less. */
        {
                HashRun r = {};
                StoreHash *h = NULL;

                ASSERT_OK(store_hash_start(&loop, fd, size - 10, 20, UPLOAD_CHECKSUM_MD5, on_hashed, &r, &h));
                ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
                ASSERT_EQ(r.error, -ENODATA);
        }
        /* Freed before it ran: never called back, nothing leaks. */
        {
                HashRun r = {};
                StoreHash *h[8] = {};

                for (unsigned i = 0; i < ELEMENTSOF(h); i++)
                        ASSERT_OK(store_hash_start(&loop, fd, 0, size, UPLOAD_CHECKSUM_SHA256, on_hashed, &r, &h[i]));
                for (unsigned i = 0; i < ELEMENTSOF(h); i++)
                        store_hash_free(h[i]);
                ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
                ASSERT_FALSE(r.called);
        }

        ASSERT_OK(uv_loop_close(&loop));
        close(fd);
        free(data);
}

int main(void) {
        RUN(test_crc32c);
        RUN(test_encoders);
        RUN(test_part_size);
        RUN(test_backoff);
        RUN(test_object_url);
        RUN(test_xml_find);
        RUN(test_hash);
        return 0;
}
