// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * One object for every kmesh program, so they share one set of maps. Each
 * attach point keeps its own file.
 */
#include "cgroup_sock.c"
#include "tc_pod.c"
#include "sockops.c"
#include "sk_msg.c"
#include "wp_msg.c"
#include "conn_iter.c"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
