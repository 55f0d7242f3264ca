// Package fortio pins the fortio release every benchmark, test image and
// `make fortio` uses: one place to change it (the Makefile reads it from
// this file). Later releases need a module the module proxy here refuses.
package fortio

// Version is fortio's release, as `go install fortio.org/fortio@Version`
// takes it.
const Version = "v1.66.5"
