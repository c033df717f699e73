/* SPDX-License-Identifier: MIT */
/*
 * report-ids.h - one fixed MESSAGE_ID per kind of record, as in
 * systemd/spotwatchd.catalog. Never change an id once released: users match
 * on them (journalctl MESSAGE_ID=...).
 */
#pragma once

#define REPORT_ID_NOTICE      "07730000b0d644d3ab150b17639101d1"
#define REPORT_ID_PLAN_START  "ab13545d443e4f27bb06f7d1ce95a573"
#define REPORT_ID_SIGNAL      "0b37a0125f2c40118495541a7287751c"
#define REPORT_ID_PROCESS     "1f258b649ea6481f8cd69dcb18c76b0e"
#define REPORT_ID_HOOK        "bf39a5db9aa64e48bf1647c6e308aa24"
#define REPORT_ID_HOOK_OUTPUT "28600efdea7841349d9fef75293779af"
#define REPORT_ID_PLAN_DONE   "8ed4d92b6efb4f629d8a2b76b940047d"
#define REPORT_ID_CANCEL      "c86e4aee6caf4d188b25dccad585c9cc"
#define REPORT_ID_ACK         "10e8fbafcdaf48ac82b873a5d3a033f4"
#define REPORT_ID_UPLOAD      "595f5e2f55f540babb3dae80a89815e9"
