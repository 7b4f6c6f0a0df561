// A Go holder written for the benchmark as a stand-in for kubernetes-image-puller's `sleep`,
// whose module the Go module proxy here refuses. It has the same behaviour (one Go duration
// argument, usage on stderr, then time.Sleep) and imports the same standard-library packages
// (fmt, io, os, time), so its size, memory and signal handling are those of any Go `sleep`:
// they come from the Go runtime, not from these few lines.
package main

import (
	"fmt"
	"io"
	"os"
	"time"
)

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s DURATION (a Go duration such as 720h)\n", os.Args[0])
}

func main() {
	if len(os.Args) != 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	d, err := time.ParseDuration(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "bad duration %q: %v\n", os.Args[1], err)
		usage(os.Stderr)
		os.Exit(2)
	}
	time.Sleep(d)
}
