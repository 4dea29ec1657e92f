package test

import (
	"math"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/postscale/caddy-postscale/internal/testenv"
)

// The Caddyfile that deploy/ ships (the Dockerfile's, the Compose file's
// and the Kubernetes sidecar's), run verbatim by the same binary with the
// same environment variables, outside a container, as two replicas on the
// real PostgreSQL and Redis.
func TestDeployCaddyfile(t *testing.T) {
	caddyfile, err := os.ReadFile("../deploy/Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	dsn := testenv.Postgres(t)
	redisURL, prefix := testenv.Redis(t)
	rec := newRecorder(t, "mail")
	env := []string{
		"POSTSCALE_POSTGRES_DSN=" + dsn,
		"POSTSCALE_REDIS_URL=" + redisURL,
		"POSTSCALE_REDIS_PREFIX=" + prefix,
		"POSTSCALE_REPLICAS=2",
		"POSTSCALE_UPSTREAM=" + rec.addr(),
	}
	r1 := startProc(t, "replica-1", string(caddyfile), env...)
	r2 := startProc(t, "replica-2", string(caddyfile), env...)

	if r := r1.send(t, http.MethodGet, "/healthz", ""); r.status != http.StatusOK {
		t.Errorf("GET /healthz without a key: got %d, want 200", r.status)
	}
	if rec.count() != 0 {
		t.Errorf("the health check reached the backend")
	}
	assertRejected(t, r2.send(t, http.MethodPost, "/v1/emails", ""), missingKey)

	r1.createAccount(t, "acme", "starter")
	var k createdKey
	r1.admin(t, http.MethodPost, "/postscale/keys", map[string]any{
		"account": "acme", "name": "deploy test", "mode": "live", "scopes": []string{"emails:send"},
	}, http.StatusCreated, &k)

	if r := r2.send(t, http.MethodPost, "/v1/emails", k.Key); r.status != http.StatusOK {
		t.Fatalf("key created on replica 1, POST on replica 2: got %d %s, want 200", r.status, r.body)
	}
	got := rec.last(t)
	assertPostscaleHeaders(t, got.Header, map[string]string{
		"Postscale-Mode": "live", "Postscale-Account-Id": "acme", "Postscale-Key-Id": k.ID, "Postscale-Plan": "starter",
	})
	assertKeyAbsent(t, got, k.Key)
	if r := r2.send(t, http.MethodGet, "/v1/emails", k.Key); r.status != http.StatusForbidden {
		t.Errorf("send-only key reading: got %d, want 403 insufficient_scope", r.status)
	}

	// Starter is 10/s with bursts of 10, for the whole cluster: of 20
	// requests at once, alternating between the replicas, about 10 pass
	// (one more may have refilled meanwhile), not 10 on each.
	admitted := 0
	start := time.Now()
	for i := range 20 {
		g := []*proc{r1, r2}[i%2]
		if g.send(t, http.MethodPost, "/v1/emails", k.Key).status == http.StatusOK {
			admitted++
		}
	}
	// 9 tokens were left; the bucket refills 10 a second meanwhile. Each
	// replica on its own would have let 10 more through.
	most := 9 + int(math.Ceil(10*time.Since(start).Seconds()))
	if admitted < 9 || admitted > most {
		t.Errorf("20 requests over two replicas on a 10/s plan: %d admitted, want 9 to %d (the 9 tokens left and the refill)", admitted, most)
	}

	r1.admin(t, http.MethodDelete, "/postscale/keys/"+k.ID, nil, http.StatusOK, nil)
	if took, ok := waitFor(time.Second, func() bool {
		return r2.send(t, http.MethodPost, "/v1/emails", k.Key).status == http.StatusUnauthorized
	}); !ok {
		t.Errorf("a key revoked on replica 1 still works on replica 2 after %v", took)
	}
}
