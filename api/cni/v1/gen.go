// Package cniv1 is the gRPC API between the kmesh-cni plugin and the node
// daemon (cni.proto). `make generate` regenerates the Go code with protoc.
package cniv1

//go:generate protoc --plugin=protoc-gen-go=../../../bin/tools/protoc-gen-go --plugin=protoc-gen-go-grpc=../../../bin/tools/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative cni.proto
