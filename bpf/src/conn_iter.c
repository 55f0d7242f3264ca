// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The daemon's periodic sweep over open connections: one km_conn_event
 * (type SNAPSHOT) per enrolled TCP socket still open, written to the
 * iterator's reader. Driven from userspace on the daemon's interval, so it
 * reports idle and accelerated connections (which see no ACKs) alike and
 * costs nothing on the packet path. An iter/tcp walks the TCP sockets of
 * the network namespace the reader was opened in: the daemon opens one
 * per enrolled pod, and each socket's record is in km_tcp_sock under its
 * cookie.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "km_conn.h"

SEC("iter/tcp")
int km_conn_iter(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct km_conn_event e = {};
	struct km_sock_value *s;
	struct km_conn_value *c;
	struct tcp_sock *tp;
	__u64 cookie;

	if (!skc)
		return 0;
	/* Listeners have no record; time-wait and request sockets are not
	 * full sockets (and have reported or will report otherwise). */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	cookie = bpf_get_socket_cookie(tp);
	s = bpf_map_lookup_elem(&km_tcp_sock, &cookie);
	if (!s)
		return 0;
	/* Ends not yet established have no record. */
	c = &s->conn;
	if (!(c->flags & KM_CONN_TELEMETRY) || (c->flags & KM_CONN_CLOSED))
		return 0;
	e.conn = *c;
	e.now_ns = bpf_ktime_get_ns();
	km_event_tcp(&e, c, tp, ((struct sock *)tp)->__sk_common.skc_state);
	e.type = KM_EV_SNAPSHOT;
	bpf_seq_write(ctx->meta->seq, &e, sizeof(e));
	return 0;
}
