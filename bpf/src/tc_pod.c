// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc program on a pod's host-side veth, egress: every packet on its way into
 * the pod passes here. kmesh-cni attaches it per pod (a cls_bpf filter under
 * clsact, so it chains with other tc users; see bpf/podtc).
 *
 * It authorizes new TCP connections toward the pod: a SYN that the pod's
 * policies deny is turned around into a RST+ACK and sent back toward the
 * client, which fails at once instead of waiting for SYN retries. Only SYNs
 * are looked at, so established traffic costs one header parse.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "km_authz.h"

/* TC_ACT_UNSPEC: the next filter (cls_bpf; tcx "next") sees the packet. */
#define KM_TC_NEXT TC_ACT_UNSPEC

struct km_pseudo4 {
	__u32 saddr;
	__u32 daddr;
	__u8 zero;
	__u8 proto;
	__u16 len;
};

struct km_pseudo6 {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 len;
	__u8 zero[3];
	__u8 next;
};

static __always_inline __u16 km_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/*
 * Turns the SYN in skb into a RST+ACK from the pod to the client and sends
 * it back in through the veth. l3 is the network header offset, l4 the TCP
 * header offset; v4 picks the family.
 */
static __always_inline int km_reply_rst(struct __sk_buff *skb, __u32 l4, int v4)
{
	void *data, *end;
	struct ethhdr *eth;
	struct tcphdr *tcp;
	__u8 mac[ETH_ALEN];
	__u32 seq;
	__u16 sport;
	__s64 sum;

	/* Keep headers only: the RST carries no options and no payload. */
	if (bpf_skb_change_tail(skb, l4 + sizeof(struct tcphdr), 0))
		return TC_ACT_SHOT;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_SHOT;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	if (l4 > 128)
		return TC_ACT_SHOT;
	tcp = data + l4;
	if ((void *)(tcp + 1) > end)
		return TC_ACT_SHOT;
	sport = tcp->source;
	tcp->source = tcp->dest;
	tcp->dest = sport;
	seq = tcp->seq;
	tcp->ack_seq = bpf_htonl(bpf_ntohl(seq) + 1);
	tcp->seq = 0;
	((__u8 *)tcp)[12] = 5 << 4; /* data offset: 20 bytes, no options */
	((__u8 *)tcp)[13] = 0x14;   /* RST | ACK */
	tcp->window = 0;
	tcp->urg_ptr = 0;
	tcp->check = 0;

	if (v4) {
		struct iphdr *ip = data + sizeof(struct ethhdr);
		struct km_pseudo4 ph = {};
		__u32 a;

		if ((void *)(ip + 1) > end)
			return TC_ACT_SHOT;
		a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
		ip->ttl = 64;
		ip->tot_len = bpf_htons(l4 - sizeof(struct ethhdr) + sizeof(struct tcphdr));
		ip->frag_off = 0;
		ip->check = 0;
		if (ip->ihl != 5)
			return TC_ACT_SHOT; /* options were refused earlier; be safe */
		ip->check = km_fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));
		ph.saddr = ip->saddr;
		ph.daddr = ip->daddr;
		ph.proto = IPPROTO_TCP;
		ph.len = bpf_htons(sizeof(struct tcphdr));
		sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	} else {
		struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
		struct km_pseudo6 ph = {};
		struct in6_addr a;

		if ((void *)(ip6 + 1) > end)
			return TC_ACT_SHOT;
		a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
		ip6->hop_limit = 64;
		ip6->payload_len = bpf_htons(sizeof(struct tcphdr));
		__builtin_memcpy(ph.saddr, &ip6->saddr, 16);
		__builtin_memcpy(ph.daddr, &ip6->daddr, 16);
		ph.len = bpf_htonl(sizeof(struct tcphdr));
		ph.next = IPPROTO_TCP;
		sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	}
	if ((void *)(tcp + 1) > end)
		return TC_ACT_SHOT;
	sum = bpf_csum_diff(0, 0, (__be32 *)tcp, sizeof(*tcp), sum);
	tcp->check = km_fold(sum);

	km_count(KM_STAT_AUTHZ_RESET_SENT);
	/* In through the veth: to the bridge it comes from the pod. */
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

SEC("tc")
int km_tc_to_pod(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct km_addr src, dst;
	struct km_backend_value *to, *from;
	struct tcphdr *tcp;
	__u32 l4, identity = 0;
	int v4;

	km_count(KM_STAT_TC_SEEN);
	if ((void *)(eth + 1) > end)
		return KM_TC_NEXT;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl != 5)
			return KM_TC_NEXT;
		if (ip->frag_off & bpf_htons(0x1fff))
			return KM_TC_NEXT; /* not the first fragment: no TCP header */
		km_addr_from_v4(&src, ip->saddr);
		km_addr_from_v4(&dst, ip->daddr);
		l4 = sizeof(*eth) + sizeof(*ip);
		v4 = 1;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		/* TCP right after the fixed header; extension headers on a SYN
		 * toward a pod are not something the mesh produces. */
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return KM_TC_NEXT;
		__builtin_memcpy(&src, &ip6->saddr, 16);
		__builtin_memcpy(&dst, &ip6->daddr, 16);
		l4 = sizeof(*eth) + sizeof(*ip6);
		v4 = 0;
	} else {
		return KM_TC_NEXT;
	}

	tcp = data + l4;
	if ((void *)(tcp + 1) > end)
		return KM_TC_NEXT;
	if (!tcp->syn || tcp->ack || tcp->rst)
		return KM_TC_NEXT;

	to = km_workload_at(&dst);
	if (!to || !to->authz_ps)
		return KM_TC_NEXT;
	from = km_workload_at(&src);
	if (from)
		identity = from->identity_id;
	if (!km_authz_decide(to->authz_ps, identity, &src, &dst, bpf_ntohs(tcp->dest)))
		return KM_TC_NEXT;
	return km_reply_rst(skb, l4, v4);
}
