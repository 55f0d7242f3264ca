// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc program on a pod's host-side veth, egress: every packet on its way into
 * the pod passes here. kmesh-cni attaches it per pod (tcx, so it chains with
 * other tc users); the destination-side checks (authorization) live here.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "km_maps.h"

SEC("tc")
int km_tc_to_pod(struct __sk_buff *skb)
{
	km_count(KM_STAT_TC_SEEN);
	/* TC_ACT_UNSPEC is tcx "next": let later programs on the chain see it. */
	return TC_ACT_UNSPEC;
}
