// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The PROXY v2 header on a waypoint-bound client's first bytes (sk_msg,
 * attached to km_wp_sock). The connect hook sent the client to a waypoint
 * pod and kept the address it dialled in km_tcp_sock; sockops filed the
 * socket in km_wp_sock at established. On the socket's first send with
 * data this program puts the header in front of the data and marks the
 * element; sockops takes the socket out of km_wp_sock once the peer has
 * acknowledged data (an sk_msg program may not remove its own socket), and
 * the kernel then gives the socket its own TCP operations back. Until
 * then later sends pass untouched.
 *
 * A client that never sends (a server-first protocol) never gets a header:
 * its waypoint learns nothing and gives up on it (see README).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "km_proxy.h"

SEC("sk_msg")
int km_wp_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct km_sock_value *s;
	struct tcp_sock *tp;
	__u64 cookie;

	if (!sk)
		return SK_PASS;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return SK_PASS;
	/* sk_msg programs may not ask for the cookie; sockops gave the socket
	 * one before filing it here. */
	cookie = ((struct sock *)tp)->__sk_common.skc_cookie.counter;
	if (!cookie)
		return SK_PASS;
	s = bpf_map_lookup_elem(&km_tcp_sock, &cookie);
	/* No element (an upgrade replaced km_tcp_sock) or the header went
	 * out already: nothing to add, ever. */
	if (!s || !(s->flags & KM_SOCK_WAYPOINT) || (s->flags & KM_SOCK_HEADER_SENT))
		return SK_PASS;
	/* The send fails (EACCES) rather than reach the waypoint without the
	 * header; the socket stays, and its next send tries again. */
	if (km_pp2_write(msg, s)) {
		km_count(KM_STAT_WP_HEADER_FAIL);
		return SK_DROP;
	}
	s->flags |= KM_SOCK_HEADER_SENT;
	km_count(KM_STAT_WP_HEADER);
	return SK_PASS;
}
