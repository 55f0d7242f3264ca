/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The PROXY protocol version 2 header (HAProxy's proxy-protocol.txt,
 * section 2.2) a waypoint reads in front of a client's first bytes: who
 * connected (the client socket's own address and port) and where the
 * client meant to go (the address it dialled: a service VIP or a pod).
 * Envoy, HAProxy and Go's go-proxyproto all read it. No TLVs: a waypoint
 * derives the client's identity from the TCP peer, never from the header.
 */
#ifndef KM_PROXY_H
#define KM_PROXY_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "km_conn.h"
#include "km_lb.h"

#define KM_PP2_VER_CMD 0x21    /* version 2, command PROXY */
#define KM_PP2_TCP4 0x11       /* AF_INET, STREAM */
#define KM_PP2_TCP6 0x21       /* AF_INET6, STREAM */

/* The fixed part: signature, version and command, family and transport,
 * length of the addresses that follow (big endian). 16 bytes. */
struct km_pp2_hdr {
	__u32 sig[3];
	__u8 ver_cmd;
	__u8 fam;
	__u16 len;
};

/* 16 + 12 bytes. Addresses and ports in network order. */
struct km_pp2_v4 {
	struct km_pp2_hdr h;
	__u32 src;
	__u32 dst;
	__u16 src_port;
	__u16 dst_port;
};

/* 16 + 36 bytes. */
struct km_pp2_v6 {
	struct km_pp2_hdr h;
	__u32 src[4];
	__u32 dst[4];
	__u16 src_port;
	__u16 dst_port;
};

static __always_inline void km_pp2_fixed(struct km_pp2_hdr *h, __u8 fam, __u16 len)
{
	/* \r\n\r\n\0\r\nQUIT\n */
	h->sig[0] = bpf_htonl(0x0D0A0D0A);
	h->sig[1] = bpf_htonl(0x000D0A51);
	h->sig[2] = bpf_htonl(0x5549540A);
	h->ver_cmd = KM_PP2_VER_CMD;
	h->fam = fam;
	h->len = bpf_htons(len);
}

/* How much of the message's first bytes the header is joined with. */
#define KM_PP2_JOIN_MAX 4096

/* Inserts len bytes at the front of the message and copies hdr there. len
 * is a constant at every call, so the bounds check is one the verifier
 * can follow. */
static __always_inline int km_pp2_prepend(struct sk_msg_md *msg, const void *hdr, __u32 len)
{
	void *data, *end;
	__u32 join;

	if (bpf_msg_push_data(msg, 0, len, 0))
		return -1;
	/* The pushed bytes sit in a buffer of their own, and tcp_bpf sends
	 * each buffer of a message with a call of its own (no MSG_MORE): on a
	 * TCP_NODELAY socket the header left as a segment by itself, ahead of
	 * the data (measured on the bench's new-connection path: 7 packets
	 * per connection into the waypoint's pod against 6 into a proxy's
	 * without a header, and ~36 µs more of the client's CPU per
	 * connection in the second transmit). Pulling the header together
	 * with the data behind it, up to a page, makes them one buffer and
	 * one segment (a copy of that much); beyond a page the message was
	 * more than a segment anyway. The pulled window is also where the
	 * header is written. */
	join = msg->size;
	if (join > KM_PP2_JOIN_MAX)
		join = KM_PP2_JOIN_MAX;
	if (join < len)
		join = len;
	/* A pull that cannot get its page (memory pressure) falls back to the
	 * header alone, a segment of its own, rather than fail the send. */
	if (bpf_msg_pull_data(msg, 0, join, 0) && bpf_msg_pull_data(msg, 0, len, 0))
		return -1;
	data = msg->data;
	end = msg->data_end;
	if (data + len > end)
		return -1;
	__builtin_memcpy(data, hdr, len);
	return 0;
}

static __always_inline int km_pp2_write4(struct sk_msg_md *msg, const struct km_sock_value *s)
{
	struct km_pp2_v4 h;
	/* An AF_INET6 socket speaking IPv4 has its own address mapped too.
	 * Both are read, each at its fixed offset: clang turns a conditional
	 * read into one load at a computed offset, which the verifier refuses
	 * for the context. */
	__u32 ip4 = msg->local_ip4, mapped = msg->local_ip6[3];

	asm volatile("" : "+r"(ip4), "+r"(mapped));
	km_pp2_fixed(&h.h, KM_PP2_TCP4, sizeof(h) - sizeof(h.h));
	h.src = msg->family == AF_INET ? ip4 : mapped;
	h.dst = s->orig.a[3];
	h.src_port = bpf_htons((__u16)msg->local_port);
	h.dst_port = s->orig_port;
	return km_pp2_prepend(msg, &h, sizeof(h));
}

static __always_inline int km_pp2_write6(struct sk_msg_md *msg, const struct km_sock_value *s)
{
	struct km_pp2_v6 h;

	km_pp2_fixed(&h.h, KM_PP2_TCP6, sizeof(h) - sizeof(h.h));
	h.src[0] = msg->local_ip6[0];
	h.src[1] = msg->local_ip6[1];
	h.src[2] = msg->local_ip6[2];
	h.src[3] = msg->local_ip6[3];
	h.dst[0] = s->orig.a[0];
	h.dst[1] = s->orig.a[1];
	h.dst[2] = s->orig.a[2];
	h.dst[3] = s->orig.a[3];
	h.src_port = bpf_htons((__u16)msg->local_port);
	h.dst_port = s->orig_port;
	return km_pp2_prepend(msg, &h, sizeof(h));
}

/* Writes the header for a client whose original destination is s->orig
 * (port s->orig_port, network order). A v4-mapped destination is an IPv4
 * connection (possibly an AF_INET6 socket that dialled ::ffff:a.b.c.d) and
 * gets the IPv4 form. */
static __always_inline int km_pp2_write(struct sk_msg_md *msg, const struct km_sock_value *s)
{
	if (km_addr_is_v4mapped(&s->orig))
		return km_pp2_write4(msg, s);
	if (msg->family != AF_INET6)
		return -1;
	return km_pp2_write6(msg, s);
}

#endif
