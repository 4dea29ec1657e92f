package test

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestTwoSitesSharingAStore: two sites in one config share a store, and so
// the buckets, but define the plan growth differently (10/s and 100/s).
// A client alternating between them (the issue: 7,491 requests admitted in
// 3 s on a 100/s plan) gets no more than the larger definition allows,
// and each site's answers follow its own definition.
func TestTwoSitesSharingAStore(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	site := func(host string, rate int) string {
		return fmt.Sprintf(`http://%s:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		store sqlite %s
		plan growth %d
	}
	reverse_proxy %s
}
`, host, store, rate, backend.addr())
	}
	loadCaddyfile(t, site("small.example", 10)+site("big.example", 100))
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "server", "live")

	hosts := [2]string{"small.example", "big.example"}
	policies := [2]string{`"growth";q=10;w=1`, `"growth";q=100;w=1`}
	var sent, admitted [2]int
	before := backend.count()
	start := time.Now()
	for i := 0; time.Since(start) < 2*time.Second; i++ {
		site := i % 2
		req, err := http.NewRequest(http.MethodGet, gatewayURL+"/v1/emails", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = hosts[site]
		req.Header.Set("Authorization", "Bearer "+k.Key)
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		sent[site]++
		switch resp.StatusCode {
		case http.StatusOK:
			admitted[site]++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("%s: status %d", hosts[site], resp.StatusCode)
		}
		if got := resp.Header.Get("RateLimit-Policy"); got != policies[site] {
			t.Fatalf("%s: RateLimit-Policy %q, want %q (its own definition)", hosts[site], got, policies[site])
		}
	}
	elapsed := time.Since(start).Seconds()
	total := admitted[0] + admitted[1]
	bound := int(100*elapsed) + 100 + 1
	t.Logf("%d requests in %.2fs: %d of %d admitted on the 10/s site, %d of %d on the 100/s site; 100/s allows %d",
		sent[0]+sent[1], elapsed, admitted[0], sent[0], admitted[1], sent[1], bound)
	if n := backend.count() - before; n != total {
		t.Errorf("backend received %d requests, %d were admitted", n, total)
	}
	if sent[1] < 2*bound {
		t.Skipf("only %d requests to the 100/s site: too few to tell", sent[1])
	}
	if total > bound {
		t.Errorf("admitted %d in %.2fs, more than the larger definition allows (%d)", total, elapsed, bound)
	}
}
