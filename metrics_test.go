package postscale

import (
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetrics(t *testing.T) {
	s := newFakeStore() // account acme on growth
	h := newTestHandler(t, s, map[string]Plan{"growth": {Rate: 1, Burst: 1}})
	key, _ := s.add(t)
	revokedKey, revokedRec := s.add(t)
	s.revoke(revokedRec.Hash)

	reg := prometheus.NewRegistry()
	if err := registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if err := registerMetrics(reg); err != nil {
		t.Fatalf("registering twice in one config: %v", err)
	}

	counter := func(outcome, mode, plan string) float64 {
		return testutil.ToFloat64(metrics.requests.WithLabelValues(outcome, mode, plan))
	}
	type reading struct{ admitted, limited, missing, revoked, hits, misses, lookups float64 }
	read := func() reading {
		return reading{
			admitted: counter("admitted", "live", "growth"),
			limited:  counter("rate_limited", "live", "growth"),
			missing:  counter("missing", "", ""),
			revoked:  counter("revoked", "live", "growth"),
			hits:     testutil.ToFloat64(metrics.cacheHits),
			misses:   testutil.ToFloat64(metrics.cacheMisses),
			lookups:  testutil.ToFloat64(metrics.storeLookups),
		}
	}
	before := read()
	for _, k := range []string{key, key, "", revokedKey} {
		r, _ := newRequest(k)
		if err := h.ServeHTTP(httptest.NewRecorder(), r, &recordingNext{}); err != nil {
			t.Fatal(err)
		}
		h.keys.cache.Wait()
	}
	after := read()
	got := reading{
		admitted: after.admitted - before.admitted,
		limited:  after.limited - before.limited,
		missing:  after.missing - before.missing,
		revoked:  after.revoked - before.revoked,
		hits:     after.hits - before.hits,
		misses:   after.misses - before.misses,
		lookups:  after.lookups - before.lookups,
	}
	want := reading{admitted: 1, limited: 1, missing: 1, revoked: 1, hits: 1, misses: 2, lookups: 2}
	if got != want {
		t.Errorf("metric increments: got %+v, want %+v", got, want)
	}
	if n := testutil.CollectAndCount(metrics.lookupDuration); n != 1 {
		t.Errorf("lookup duration histogram: %d series, want 1", n)
	}

	// No label may carry an account or a key.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if v := l.GetValue(); v == "acme" || v == revokedRec.ID || len(v) > 20 {
					t.Errorf("%s has label %s=%q", mf.GetName(), l.GetName(), v)
				}
			}
		}
	}
}
