// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The daemon's periodic sweep over open connections: one km_conn_event
 * (type SNAPSHOT) per enrolled TCP socket still open, written to the
 * iterator's reader. Driven from userspace on the daemon's interval, so it
 * reports idle and accelerated connections (which see no ACKs) alike and
 * costs nothing on the packet path.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "km_conn.h"

/* A real function, not inlined, so the record's type is in the object's
 * BTF (bpf/layout checks the Go mirror against it). */
static __noinline int km_seq_write(struct seq_file *seq, const struct km_conn_event *e)
{
	return bpf_seq_write(seq, (void *)e, sizeof(*e));
}

SEC("iter/bpf_sk_storage_map")
int km_conn_iter(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct km_sock_value *s = ctx->value;
	struct sock *sk = ctx->sk;
	struct km_conn_event e = {};
	struct km_conn_value *c;
	struct tcp_sock *tp;

	if (!s || !sk)
		return 0;
	/* UDP sockets and TCP ends not yet established have no record. */
	c = &s->conn;
	if (!(c->flags & KM_CONN_TELEMETRY) || (c->flags & KM_CONN_CLOSED))
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	e.conn = *c;
	e.now_ns = bpf_ktime_get_ns();
	km_event_tcp(&e, c, tp, ((struct sock *)tp)->__sk_common.skc_state);
	e.type = KM_EV_SNAPSHOT;
	km_seq_write(ctx->meta->seq, &e);
	return 0;
}
