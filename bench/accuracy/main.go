// Command accuracy offers a steady load above a plan's limit to the gateway
// and reports how many requests the token bucket admitted against the
// ideal, rate·t + burst, where t is the time from the first request sent to
// the last. bench/ratelimit-accuracy.sh runs it.
//
//	accuracy -url http://127.0.0.1:8080/ -key ps_live_… -plan-rate 50 -burst 50
//
// With -free-ports n it prints n free localhost TCP ports and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

func main() {
	var (
		url       = flag.String("url", "", "gateway URL to send GET requests to")
		key       = flag.String("key", "", "API key, sent as Authorization: Bearer <key>")
		offered   = flag.Float64("rate", 250, "offered load, requests per second over all connections")
		duration  = flag.Duration("duration", 10*time.Second, "how long to offer the load")
		conns     = flag.Int("conns", 10, "connections, one sender each")
		planRate  = flag.Float64("plan-rate", 50, "the plan's rate, requests per second")
		burst     = flag.Int("burst", 50, "the plan's burst")
		tolerance = flag.Float64("tolerance", 1, "allowed error, percent; outside it the exit status is 1")
		freePorts = flag.Int("free-ports", 0, "print this many free localhost ports and exit")
	)
	flag.Parse()
	if *freePorts > 0 {
		if err := printFreePorts(*freePorts); err != nil {
			fatal(err)
		}
		return
	}
	if *url == "" || *key == "" || *conns < 1 || !(*offered > 0) || *duration <= 0 {
		fatal(errors.New("need -url, -key, and positive -rate, -duration, -conns"))
	}

	res := run(*url, *key, *offered, *duration, *conns)
	t := res.last.Sub(res.first).Seconds()
	ideal := *planRate*t + float64(*burst)
	errPct := (float64(res.admitted) - ideal) / ideal * 100
	fmt.Printf("offered:   %.0f req/s over %d connections for %v (%.1f× the plan's %g req/s, burst %d)\n",
		*offered, *conns, *duration, *offered / *planRate, *planRate, *burst)
	fmt.Printf("sent:      %d in t = %.4f s (first to last request sent), %.1f req/s\n", res.sent, t, float64(res.sent-1)/t)
	fmt.Printf("admitted:  %d\n", res.admitted)
	fmt.Printf("rejected:  %d (429)\n", res.rejected)
	if res.other > 0 {
		fmt.Printf("other:     %d (neither 2xx nor 429; first: %s)\n", res.other, res.firstOther)
	}
	fmt.Printf("ideal:     %.1f = %g·t + %d\n", ideal, *planRate, *burst)
	fmt.Printf("error:     %+.2f%% (target ±%g%%)\n", errPct, *tolerance)
	if res.other > 0 || math.Abs(errPct) > *tolerance {
		fmt.Println("result:    FAIL")
		os.Exit(1)
	}
	fmt.Println("result:    PASS")
}

type result struct {
	sent, admitted, rejected, other int
	firstOther                      string
	first, last                     time.Time // first and last request sent
}

// run offers rate requests per second for d over conns connections: each
// sender ticks every conns/rate seconds, the senders' ticks staggered
// evenly, so the load is steady rather than in waves.
func run(url, key string, rate float64, d time.Duration, conns int) result {
	interval := time.Duration(float64(conns) / rate * float64(time.Second))
	start := time.Now().Add(100 * time.Millisecond)
	// Requests in flight at the end are waited for, not cancelled: the
	// gateway has counted them.
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(d))
	defer cancel()

	var (
		mu    sync.Mutex
		total result
		wg    sync.WaitGroup
	)
	for i := range conns {
		wg.Go(func() {
			client := &http.Client{
				Timeout: 5 * time.Second,
				Transport: &http.Transport{
					MaxConnsPerHost:     1,
					MaxIdleConnsPerHost: 1,
					DisableCompression:  true,
				},
			}
			var r result
			time.Sleep(time.Until(start.Add(time.Duration(i) * interval / time.Duration(conns))))
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				sent := time.Now()
				if sent.After(start.Add(d)) {
					break
				}
				status, err := send(client, url, key)
				if r.sent == 0 {
					r.first = sent
				}
				r.last = sent
				r.sent++
				switch {
				case err != nil:
					r.other++
					if r.firstOther == "" {
						r.firstOther = err.Error()
					}
				case status >= 200 && status < 300:
					r.admitted++
				case status == http.StatusTooManyRequests:
					r.rejected++
				default:
					r.other++
					if r.firstOther == "" {
						r.firstOther = fmt.Sprintf("HTTP %d", status)
					}
				}
				select {
				case <-tick.C:
				case <-ctx.Done():
				}
			}
			mu.Lock()
			defer mu.Unlock()
			total.sent += r.sent
			total.admitted += r.admitted
			total.rejected += r.rejected
			total.other += r.other
			if total.firstOther == "" {
				total.firstOther = r.firstOther
			}
			if r.sent > 0 {
				if total.first.IsZero() || r.first.Before(total.first) {
					total.first = r.first
				}
				if r.last.After(total.last) {
					total.last = r.last
				}
			}
		})
	}
	wg.Wait()
	return total
}

func send(c *http.Client, url, key string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// printFreePorts prints n distinct free localhost ports, one a line.
func printFreePorts(n int) error {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		ls = append(ls, l)
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
	}
	return nil
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "accuracy:", err)
	os.Exit(2)
}
