// Package cniv1 holds the messages of the API between the kmesh-cni plugin
// and the node daemon (cni.proto); the gRPC service is in podregistry.
// `go generate` here regenerates the Go code with protoc and the plugins
// installed in bin/tools (protoc-gen-go v1.36.12, protoc-gen-go-grpc v1.6.2).
package cniv1

//go:generate protoc --plugin=protoc-gen-go=../../../bin/tools/protoc-gen-go --plugin=protoc-gen-go-grpc=../../../bin/tools/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative cni.proto podregistry/podregistry.proto
