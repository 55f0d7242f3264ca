// Package h1 is kmesh-waypoint's HTTP/1.1 fast path: a server loop for
// downstream connections and the wire side of the upstream client
// (request out, response in via http.ReadResponse). Parsing stays the
// standard library's (http.ReadRequest, http.ReadResponse); what this
// package replaces is net/http's connection handling around them.
//
// Why (measured with waypoint/internal/wpbench: 1000 services, fortio 16
// connections, 1 KiB each way, loopback, 2 shared cores; HAProxy in HTTP
// mode spends ~17 µs of CPU per request there):
//
//   - upstream, net/http's Transport: ~50 µs per request through the
//     waypoint, 0.66x HAProxy's requests per second. Each request goes to
//     a write-loop goroutine and back from a read-loop goroutine (two
//     switches and wakeups), headers and body go out in two writes, and a
//     32 KiB copy buffer is allocated per request body. With this
//     package's client on the caller's goroutine: ~39 µs.
//   - downstream, net/http's Server: every request gets a background
//     read goroutine (to notice a client leaving) with its own read
//     syscall and wakeup, the response headers are cloned at WriteHeader,
//     and each request gets its own cancelable context. This server
//     watches for a departing client only when a request is still
//     running 50 ms after its body was read, and reuses the response
//     writer per connection.
//
// HTTP/2 (h2c) stays with net/http in both directions, and so do
// upgrades upstream. server_test.go and client_test.go run the same
// exchanges through this package and through net/http and compare.
package h1
