// kinelab-lb is the API server load balancer of kinelab's multi-control-plane kind clusters, where kind's own
// (an Envoy image) cannot be pulled. It answers to the command line kind runs in that container,
// `envoy -c <bootstrap.yaml>`, and reads the two files kind writes next to it: the listener port from the LDS
// file and the control planes from the CDS file (every `address:`/`port_value:` pair under `lb_endpoints`).
// It re-reads them every second (kind replaces them with `mv`), and forwards each TCP connection to the next
// control plane that accepts one.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	pathLine    = regexp.MustCompile(`(?m)^\s*path:\s*(\S+)\s*$`)
	portLine    = regexp.MustCompile(`(?m)^\s*port_value:\s*(\d+)\s*$`)
	addressLine = regexp.MustCompile(`(?m)^\s*address:\s*(\S+)\s*$`)
)

type backends struct {
	mu    sync.Mutex
	list  []string
	next  uint64
	files [2]string // CDS, LDS
}

func (b *backends) load() (port string) {
	cds, _ := os.ReadFile(b.files[0])
	lds, _ := os.ReadFile(b.files[1])
	if m := portLine.FindSubmatch(lds); m != nil {
		port = string(m[1])
	}
	var list []string
	addresses, ports := addressLine.FindAllSubmatch(cds, -1), portLine.FindAllSubmatch(cds, -1)
	for i := 0; i < len(addresses) && i < len(ports); i++ {
		list = append(list, net.JoinHostPort(string(addresses[i][1]), string(ports[i][1])))
	}
	b.mu.Lock()
	b.list = list
	b.mu.Unlock()
	return port
}

func (b *backends) dial() (net.Conn, error) {
	b.mu.Lock()
	list := append([]string(nil), b.list...)
	b.mu.Unlock()
	start := atomic.AddUint64(&b.next, 1)
	for i := range list {
		conn, err := net.DialTimeout("tcp", list[(int(start)+i)%len(list)], 2*time.Second)
		if err == nil {
			return conn, nil
		}
	}
	return nil, fmt.Errorf("no control plane accepts connections (%d known)", len(list))
}

func main() {
	bootstrap := flag.String("c", "", "bootstrap file naming the CDS and LDS files")
	flag.Parse()
	text, err := os.ReadFile(*bootstrap)
	if err != nil {
		log.Fatal(err)
	}
	b := &backends{}
	for _, m := range pathLine.FindAllSubmatch(text, -1) {
		path := filepath.Clean(string(m[1]))
		if strings.Contains(filepath.Base(path), "lds") {
			b.files[1] = path
		} else {
			b.files[0] = path
		}
	}
	if b.files[0] == "" || b.files[1] == "" {
		log.Fatalf("%s does not name both a CDS and an LDS file", *bootstrap)
	}
	port := b.load()
	for port == "" { // kind writes the listener only after the control planes exist
		time.Sleep(time.Second)
		port = b.load()
	}
	go func() {
		for range time.Tick(time.Second) {
			b.load()
		}
	}()
	listener, err := net.Listen("tcp", ":"+port)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("kinelab-lb listening on :%s", port)
	for {
		client, err := listener.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer client.Close()
			server, err := b.dial()
			if err != nil {
				log.Print(err)
				return
			}
			defer server.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(server, client); done <- struct{}{} }()
			go func() { io.Copy(client, server); done <- struct{}{} }()
			<-done
		}()
	}
}
