package test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The rate limits of README, Rate limits as a client sees them: 429 with Retry-After,
// the RateLimit-Policy and RateLimit fields, one bucket per (account,
// mode), and buckets that survive reloads. Plans with tiny rates (a token
// every several seconds) keep the checks independent of how fast the
// machine runs the test; only the back-off test waits, for the 1 s that
// Retry-After asks.

var (
	rateLimited = rejection{http.StatusTooManyRequests, "", "rate_limit_error", "rate_limit_exceeded", true}
	// planNotConfigured is the answer for an account whose plan the
	// gateway does not know (not in the README's error table; it fails closed).
	planNotConfigured = rejection{http.StatusServiceUnavailable, "", "api_error", "plan_not_configured", false}
)

// rateLimitField is the RateLimit response field, parsed.
type rateLimitField struct {
	plan string
	r, t int64 // requests admitted now without waiting; seconds until full
}

var rateLimitSyntax = regexp.MustCompile(`^"([a-z0-9_-]+)";r=(\d+);t=(\d+)$`)

// rateLimitOf returns the one RateLimit field of r, failing the test if it
// is missing or not of the form "<plan>";r=<n>;t=<n>.
func rateLimitOf(t *testing.T, r response) rateLimitField {
	t.Helper()
	vals := r.header.Values("RateLimit")
	if len(vals) != 1 {
		t.Fatalf("RateLimit: got %q, want one field \"<plan>\";r=<n>;t=<n> (status %d)", vals, r.status)
	}
	m := rateLimitSyntax.FindStringSubmatch(vals[0])
	if m == nil {
		t.Fatalf("RateLimit: got %q, want \"<plan>\";r=<n>;t=<n>", vals[0])
	}
	rv, _ := strconv.ParseInt(m[2], 10, 64)
	tv, _ := strconv.ParseInt(m[3], 10, 64)
	return rateLimitField{plan: m[1], r: rv, t: tv}
}

// assertPolicy checks the RateLimit-Policy field of r.
func assertPolicy(t *testing.T, r response, want string) {
	t.Helper()
	if got := r.header.Values("RateLimit-Policy"); len(got) != 1 || got[0] != want {
		t.Errorf("RateLimit-Policy: got %q, want [%q]", got, want)
	}
}

// assertRateLimit checks the RateLimit field of r against plan and r.
func assertRateLimit(t *testing.T, resp response, plan string, r int64) rateLimitField {
	t.Helper()
	got := rateLimitOf(t, resp)
	if got.plan != plan || got.r != r {
		t.Errorf("RateLimit: got %q, want plan %q with r=%d", resp.header.Get("RateLimit"), plan, r)
	}
	return got
}

// admitted sends a request with key that must reach backend, and returns
// the gateway's response (with its rate-limit fields).
func admitted(t *testing.T, backend *recorder, key string) response {
	t.Helper()
	before := backend.count()
	r := get(t, "/v1/emails", bearer(key))
	if r.status != http.StatusOK || string(r.body) != backend.name {
		t.Fatalf("got %d %s, want 200 %q from backend %s (RateLimit %q, Retry-After %q)",
			r.status, r.body, backend.name, backend.name, r.header.Get("RateLimit"), r.header.Get("Retry-After"))
	}
	if n := backend.count() - before; n != 1 {
		t.Fatalf("backend %s received %d requests, want 1", backend.name, n)
	}
	return r
}

// limited sends a request with key that must be answered 429 without
// reaching backend, and returns the response and its Retry-After.
func limited(t *testing.T, backend *recorder, key string) (response, time.Duration) {
	t.Helper()
	r := expectRejected(t, backend, rateLimited, "/v1/emails", bearer(key))
	if r.status != http.StatusTooManyRequests {
		t.FailNow()
	}
	n, _ := strconv.Atoi(r.header.Get("Retry-After"))
	return r, time.Duration(n) * time.Second
}

// reload POSTs the global options and sites to the admin endpoint's /load
// as a Caddyfile, the way `caddy reload` does; force adds
// Cache-Control: must-revalidate, as `caddy reload --force` does, so that
// even an unchanged config is provisioned again. It returns whether Caddy
// started a new config (a reload of an unchanged config without force is
// a no-op in Caddy).
func reload(t *testing.T, sites string, force bool) (reprovisioned bool) {
	t.Helper()
	return postLoad(t, globalOptions("")+sites, "text/caddyfile", force)
}

// postLoad POSTs config to /load with the given Content-Type, fails the
// test unless it is loaded, and returns whether Caddy started a new config.
func postLoad(t *testing.T, config, contentType string, force bool) (reprovisioned bool) {
	t.Helper()
	before := caddy.ActiveContext()
	req, err := http.NewRequest(http.MethodPost, adminURL+"/load", strings.NewReader(config))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if force {
		req.Header.Set("Cache-Control", "must-revalidate")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("POST /load: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST /load: HTTP %d %s", resp.StatusCode, b)
	}
	return caddy.ActiveContext().Context != before.Context
}

// TestRateLimitBurstThen429: a plan from the Caddyfile admits its burst,
// counting r down on each response, then answers 429 with Retry-After,
// the fields at r=0 and the JSON error; the rejected request never reaches
// the backend.
func TestRateLimitBurstThen429(t *testing.T) {
	backend, _ := startGateway(t, "plan tiny 2 3")
	createAccount(t, "acme", "tiny")
	k := createKey(t, "acme", "server", "live")

	const policy = `"tiny";q=3;w=2` // w: 3 requests at 2/s refill in 1.5 s, rounded up
	// r: whole requests left; t: (3 - tokens left) / 2 per second, rounded up.
	for i, want := range []struct{ r, t int64 }{{2, 1}, {1, 1}, {0, 2}} {
		r := admitted(t, backend, k.Key)
		assertPolicy(t, r, policy)
		if got := assertRateLimit(t, r, "tiny", want.r); got.t != want.t {
			t.Errorf("request %d: RateLimit t: got %d, want %d", i+1, got.t, want.t)
		}
	}

	r, retry := limited(t, backend, k.Key)
	assertPolicy(t, r, policy)
	if got := assertRateLimit(t, r, "tiny", 0); got.t != 2 {
		t.Errorf("429: RateLimit t: got %d, want 2 (an empty bucket of 3 at 2/s)", got.t)
	}
	// Less than one token is missing at 2/s: under a second, rounded up.
	if retry != time.Second {
		t.Errorf("Retry-After: got %v, want 1s", retry)
	}
	if got := r.header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("429 Cache-Control: got %q, want no-store", got)
	}
}

// TestRateLimitBackOff: a client that waits the Retry-After it was given
// is admitted, and rejected requests consume nothing: after 20 more
// rejections, waiting Retry-After is still enough.
func TestRateLimitBackOff(t *testing.T) {
	backend, _ := startGateway(t, "plan quick 1 1")
	createAccount(t, "acme", "quick")
	k := createKey(t, "acme", "server", "live")

	r := admitted(t, backend, k.Key)
	assertPolicy(t, r, `"quick";q=1;w=1`)
	assertRateLimit(t, r, "quick", 0)

	_, retry := limited(t, backend, k.Key)
	time.Sleep(retry)
	admitted(t, backend, k.Key)

	for i := range 20 {
		_, retry = limited(t, backend, k.Key)
		if retry != time.Second {
			t.Fatalf("rejection %d: Retry-After %v, want 1s (at 1/s, under one token is missing); rejected requests must not consume", i+1, retry)
		}
	}
	time.Sleep(retry)
	if r := get(t, "/v1/emails", bearer(k.Key)); r.status != http.StatusOK {
		t.Fatalf("after 20 rejected requests and waiting Retry-After (%v): got %d %s (RateLimit %q), want 200: rejected requests consumed tokens",
			retry, r.status, r.body, r.header.Get("RateLimit"))
	}
}

// TestRateLimitBucketPerAccountAndMode: an account's live keys share one
// bucket, its test keys have their own of the same size, and another
// account on the same plan has its own: exhausting live traffic leaves
// test traffic and other accounts admitted, and vice versa.
func TestRateLimitBucketPerAccountAndMode(t *testing.T) {
	backend, _ := startGateway(t, "plan slow 0.05 3")
	createAccount(t, "acme", "slow")
	createAccount(t, "other", "slow")
	live := createKey(t, "acme", "server", "live")
	live2 := createKey(t, "acme", "worker", "live")
	test := createKey(t, "acme", "ci", "test")
	otherLive := createKey(t, "other", "server", "live")

	const policy = `"slow";q=3;w=60`
	for _, wantR := range []int64{2, 1} {
		assertRateLimit(t, admitted(t, backend, live.Key), "slow", wantR)
	}
	r := admitted(t, backend, live2.Key) // the same bucket
	assertPolicy(t, r, policy)
	assertRateLimit(t, r, "slow", 0)
	limited(t, backend, live.Key)
	limited(t, backend, live2.Key)

	// Live is exhausted; test traffic has a full bucket of its own.
	r = admitted(t, backend, test.Key)
	assertPolicy(t, r, policy)
	assertRateLimit(t, r, "slow", 2)
	assertRateLimit(t, admitted(t, backend, otherLive.Key), "slow", 2)
	r, _ = limited(t, backend, live.Key)
	assertRateLimit(t, r, "slow", 0)

	// And exhausting test traffic leaves live as it was.
	assertRateLimit(t, admitted(t, backend, test.Key), "slow", 1)
	assertRateLimit(t, admitted(t, backend, test.Key), "slow", 0)
	limited(t, backend, test.Key)
	assertRateLimit(t, admitted(t, backend, otherLive.Key), "slow", 1)
	if got := backend.last(t).Header.Get("Postscale-Account-Id"); got != "other" {
		t.Errorf("backend got Postscale-Account-Id %q, want other", got)
	}
}

// TestRateLimitSurvivesReload: a reload that keeps the plans keeps the
// buckets (README, Rate limits): an exhausted account stays exhausted — no free burst
// — through a forced reload of the same config (`caddy reload --force`),
// a plain reload of the same config, and a reload that changes something
// else.
func TestRateLimitSurvivesReload(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	site := gatewaySite(store, backend.addr(), "plan slow 0.05 2")
	loadCaddyfile(t, site)
	createAccount(t, "acme", "slow")
	k := createKey(t, "acme", "server", "live")
	admitted(t, backend, k.Key)
	admitted(t, backend, k.Key)
	_, first := limited(t, backend, k.Key)

	for _, c := range []struct {
		name          string
		sites         string
		force         bool
		reprovisioned bool
	}{
		{"forced reload of the same config", site, true, true},
		{"plain reload of the same config", site, false, false},
		{"reload with another cache_ttl", gatewaySite(store, backend.addr(), "plan slow 0.05 2\ncache_ttl 10m"), false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := reload(t, c.sites, c.force); got != c.reprovisioned {
				t.Fatalf("Caddy started a new config: got %v, want %v", got, c.reprovisioned)
			}
			r, retry := limited(t, backend, k.Key)
			assertPolicy(t, r, `"slow";q=2;w=40`)
			assertRateLimit(t, r, "slow", 0)
			if retry > first || retry < time.Second {
				t.Errorf("Retry-After: got %v, want between 1s and the %v before the reloads", retry, first)
			}
		})
	}
}

// TestRateLimitPlanChangeByReload: a reload that raises a plan's rate and
// burst applies to the plan's accounts at once: a client of an account that
// had exhausted the old limit is admitted right after the reload, and the
// policy names the new size.
func TestRateLimitPlanChangeByReload(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	loadCaddyfile(t, gatewaySite(store, backend.addr(), "plan tiny 0.05 2"))
	createAccount(t, "acme", "tiny")
	k := createKey(t, "acme", "server", "live")
	admitted(t, backend, k.Key)
	admitted(t, backend, k.Key)
	r, _ := limited(t, backend, k.Key)
	assertPolicy(t, r, `"tiny";q=2;w=40`)

	if !reload(t, gatewaySite(store, backend.addr(), "plan tiny 100 200"), false) {
		t.Fatal("Caddy did not start the changed config")
	}
	// A client coming back a moment later: at 100/s, 50 ms is 5 requests.
	time.Sleep(50 * time.Millisecond)
	r = get(t, "/v1/emails", bearer(k.Key))
	if r.status != http.StatusOK {
		t.Errorf("first request after raising the plan to 100/s: got %d (RateLimit-Policy %q, RateLimit %q, Retry-After %q), want 200",
			r.status, r.header.Get("RateLimit-Policy"), r.header.Get("RateLimit"), r.header.Get("Retry-After"))
	}
	assertPolicy(t, r, `"tiny";q=200;w=2`)
	rateLimitOf(t, r)
}

// TestRateLimitEnterprise: an enterprise account's own rate and burst are
// its policy and its limit; without a burst, the burst is the rate.
func TestRateLimitEnterprise(t *testing.T) {
	backend, _ := startGateway(t, "")
	adminCall(t, http.MethodPost, "/postscale/accounts",
		map[string]any{"id": "bigco", "plan": "enterprise", "rate": 0.5, "burst": 4}, http.StatusCreated, nil)
	k := createKey(t, "bigco", "server", "live")

	const policy = `"enterprise";q=4;w=8` // 4 requests at 0.5/s refill in 8 s
	for _, wantR := range []int64{3, 2, 1, 0} {
		r := admitted(t, backend, k.Key)
		assertPolicy(t, r, policy)
		assertRateLimit(t, r, "enterprise", wantR)
	}
	if got := backend.last(t).Header.Get("Postscale-Plan"); got != "enterprise" {
		t.Errorf("backend got Postscale-Plan %q, want enterprise", got)
	}
	r, retry := limited(t, backend, k.Key)
	assertPolicy(t, r, policy)
	if got := assertRateLimit(t, r, "enterprise", 0); got.t != 8 {
		t.Errorf("429: RateLimit t: got %d, want 8", got.t)
	}
	// Under one token is missing at 0.5/s: up to 2 s.
	if retry != 2*time.Second {
		t.Errorf("Retry-After: got %v, want 2s", retry)
	}

	adminCall(t, http.MethodPost, "/postscale/accounts",
		map[string]any{"id": "midco", "plan": "enterprise", "rate": 3}, http.StatusCreated, nil)
	k = createKey(t, "midco", "server", "live")
	r = admitted(t, backend, k.Key)
	assertPolicy(t, r, `"enterprise";q=3;w=1`)
	assertRateLimit(t, r, "enterprise", 2)
}

// TestRateLimitUnknownPlan: an account on a plan the config no longer
// defines (the admin API refuses new accounts on unknown plans, but a
// reload can drop a plan in use) gets 503 plan_not_configured for live and
// test keys, and nothing reaches the backend; once a reload defines the
// plan again, its requests are admitted.
func TestRateLimitUnknownPlan(t *testing.T) {
	backend, store := startGateway(t, "plan platinum 5")
	createAccount(t, "acme", "platinum")
	live := createKey(t, "acme", "server", "live")
	test := createKey(t, "acme", "ci", "test")
	if !reload(t, gatewaySite(store, backend.addr(), ""), false) {
		t.Fatal("Caddy did not start the changed config")
	}

	for _, k := range []createdKey{live, test, live} {
		expectRejected(t, backend, planNotConfigured, "/v1/emails", bearer(k.Key))
	}

	if !reload(t, gatewaySite(store, backend.addr(), "plan platinum 5"), false) {
		t.Fatal("Caddy did not start the changed config")
	}
	r := admitted(t, backend, live.Key)
	assertPolicy(t, r, `"platinum";q=5;w=1`)
	assertRateLimit(t, r, "platinum", 4)
}

// TestPlansInJSON: plans written in Caddy's JSON work like the Caddyfile's;
// a bad plan makes the config fail to load, naming the plan, and the
// running config and its buckets carry on as they were.
func TestPlansInJSON(t *testing.T) {
	backend := newRecorder(t, "mail")
	store := storePath(t)
	config := func(plans string) string {
		return jsonGateway(store, `"plans": `+plans, backend.addr())
	}
	good := config(`{"slow": {"rate": 0.05, "burst": 3}, "trial": {"rate": 0.5}}`)
	loadConfig(t, good, "json")
	createAccount(t, "acme", "slow")
	createAccount(t, "newbie", "trial")
	r := admitted(t, backend, createKey(t, "acme", "server", "live").Key)
	assertPolicy(t, r, `"slow";q=3;w=60`)
	assertRateLimit(t, r, "slow", 2)
	r = admitted(t, backend, createKey(t, "newbie", "server", "live").Key)
	assertPolicy(t, r, `"trial";q=1;w=2`) // burst: the rate rounded up

	for _, c := range []struct{ plans, want string }{
		{`{"slow": {"rate": 0}}`, "slow"},
		{`{"slow": {"rate": -1}}`, "slow"},
		{`{"slow": {"rate": 2, "burst": -1}}`, "slow"},
		{`{"Slow!": {"rate": 2}}`, "Slow!"},
	} {
		t.Run(c.plans, func(t *testing.T) {
			resp, err := httpClient.Post(adminURL+"/load", "application/json", strings.NewReader(config(c.plans)))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "plans") || !strings.Contains(string(b), c.want) {
				t.Errorf("loading plans %s: got HTTP %d %s, want 400 naming plans and %q", c.plans, resp.StatusCode, b, c.want)
			}
		})
	}
	// The good config still runs, with acme's bucket as it was, also once
	// it is provisioned again.
	if !postLoad(t, good, "application/json", true) {
		t.Fatal("a forced reload did not start a new config")
	}
	r = admitted(t, backend, createKey(t, "acme", "worker", "live").Key)
	assertPolicy(t, r, `"slow";q=3;w=60`)
	assertRateLimit(t, r, "slow", 1)
}
