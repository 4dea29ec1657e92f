// Command upstream is the mail backend of bench/perf.sh: it reads each
// request's body, as a mail service would, and answers 202 with a short
// JSON body. So that perf.sh can check the gateway did its work before it
// measures anything, it tells in response headers what it was handed:
//
//	Seen-Mode        the Postscale-Mode header it received (empty if none)
//	Seen-Credentials "yes" if an Authorization header reached it, else "no"
//
// Never the header's value. With -free-ports n it prints n loopback TCP
// ports that were free a moment ago, one a line, and exits.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	freePorts := flag.Int("free-ports", 0, "print this many free loopback ports and exit")
	flag.Parse()

	if *freePorts > 0 {
		if err := printFreePorts(*freePorts); err != nil {
			fmt.Fprintln(os.Stderr, "upstream:", err)
			os.Exit(1)
		}
		return
	}

	srv := &http.Server{
		Addr:              *addr,
		Handler:           http.HandlerFunc(accept),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Fatal(srv.ListenAndServe())
}

// accept takes any request as a mail submission.
func accept(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Seen-Mode", r.Header.Get("Postscale-Mode"))
	if r.Header.Get("Authorization") != "" {
		h.Set("Seen-Credentials", "yes")
	} else {
		h.Set("Seen-Credentials", "no")
	}
	w.WriteHeader(http.StatusAccepted)
	_, _ = io.WriteString(w, `{"accepted":true}`+"\n")
}

// printFreePorts holds n listeners open at once, so the ports differ, and
// prints their ports.
func printFreePorts(n int) error {
	var open []net.Listener
	defer func() {
		for _, ln := range open {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		open = append(open, ln)
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	}
	return nil
}
