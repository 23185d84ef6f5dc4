// Package main only anchors the wrapper module that builds etcd from
// go.etcd.io/etcd/server/v3; see hack/build-control-plane.sh.
package main

import _ "go.etcd.io/etcd/server/v3/etcdmain"

func main() {}
