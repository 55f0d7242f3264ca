// Package h1 is kmesh-waypoint's HTTP/1.1 fast path: a server loop for
// downstream connections, a message head parser (parse.go), the wire
// side of the upstream client (client.go: request out; responses come in
// through the same parser) and socket I/O without the runtime's syscall
// bookkeeping (rawio.go). net/http still serves h2c and upgrades, both
// ways.
//
// Why, measured with waypoint/internal/wpbench (1000 services, fortio 16
// connections, 1 KiB each way, loopback, 2 cores shared with other work;
// one run of 9, the paths alternated, medians; HAProxy in HTTP mode is
// the reference):
//
//	path                                   max qps   CPU µs/request
//	HAProxy HTTP hop                        20908    20.2
//	waypoint, this package                  17951    29.9
//	waypoint on net/http Server+Transport   12970    53.4
//
// Where net/http's time went (pprof, strace): its Transport hands every
// request to a write-loop goroutine and back from a read-loop goroutine
// (two switches and wakeups per request), writes headers and body in two
// writes and allocates a 32 KiB copy buffer per request body; its Server
// starts a background-read goroutine per request (a read syscall and a
// wakeup each) to notice a client leaving, clones the response headers at
// WriteHeader and gives every request its own cancelable context; and
// http.ReadRequest/ReadResponse allocate a string and a slice per header
// field (13 and 10 allocations for the benchmark's request and response
// heads, 8 and 5 with this parser: BenchmarkParse; 42 allocations per
// proxied request with the standard parsers, about 19 now). Here the
// client writes a request in one write and reads its answer on the
// caller's goroutine; the server watches for a departing
// client only when a request is still running 50 ms after its body was
// read, reuses its response writer per connection, and aborts an upstream
// exchange through ClientGone instead of a context.AfterFunc per request;
// the parser copies a head into one string and cuts every value from it.
//
// Reads and writes of the connections it serves and opens (rawio.go) go
// through syscall.RawConn with raw system calls on the non-blocking
// sockets: net.Conn's own calls enter the runtime's syscall bookkeeping,
// and a loopback write (which runs the receiver's TCP input on our time)
// lasts long enough for sysmon to take the P away, hand it to another
// thread and wake it. Measured in wpbench (7 runs, the same build with
// and without): 23499 against 20256 max qps, 24.6 against 26.7 µs of CPU
// per request, p90 at 1000 qps 1.48 against 1.83 ms; strace over 8000
// requests: 453 nanosleeps (sysmon) and 1176 futex calls against 7397 and
// 2704.
//
// Parsing is strict where a proxy must be (request smuggling): chunked
// wins over Content-Length, which is then dropped; differing lengths,
// signed lengths, unsupported codings, obsolete line folding, invalid
// names and values are refused. The tests hold this package to net/http:
// the same raw requests (those cases included) through net/http's server
// and this one (server_test.go), raw responses through http.ReadResponse
// and this parser (parse_test.go), and this client's requests parsed back
// against Request.Write's.
package h1
