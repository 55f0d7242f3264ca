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
#include "udp_iter.c"

/*
 * Never called, so never loaded (the loader keeps only functions a program
 * calls). Its signature names the shared types no map key or value
 * carries, so that clang writes them to the object's BTF, from which
 * `make generate` writes their Go side (bpf/layout).
 */
__attribute__((used)) int km_btf_types(enum km_stat stat, struct km_conn_event *event)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
