package test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	postscale "github.com/postscale/caddy-postscale"
	"github.com/postscale/caddy-postscale/internal/testenv"
)

// TestPostgresGateway: a gateway on the PostgreSQL store, its DSN taken
// from the environment at provision. Keys made through its admin API
// work; a revocation written by another replica (here a store opened on
// the same database) is rejected by this one long before its cache TTL,
// through the change feed (README, The PostgreSQL store: within 100 ms; asserted loosely, at
// 1s, and logged).
func TestPostgresGateway(t *testing.T) {
	dsn := testenv.Postgres(t)
	t.Setenv("POSTSCALE_TEST_GATEWAY_DSN", dsn)
	backend := newRecorder(t, "mail")
	loadCaddyfile(t, fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		store postgres {env.POSTSCALE_TEST_GATEWAY_DSN} {
			max_conns 4
		}
		cache_ttl 10m
	}
	reverse_proxy %s
}
`, backend.addr()))
	createAccount(t, "acme", "growth")
	k := createKey(t, "acme", "server", "live")
	other := createKey(t, "acme", "other server", "live")
	expectAdmitted(t, backend, k.Key, "/v1/emails") // now cached
	expectAdmitted(t, backend, other.Key, "/v1/emails")

	replica, err := postscale.OpenPostgresStore(t.Context(), dsn)
	if err != nil {
		t.Fatalf("opening the store as another replica: %v", err)
	}
	defer replica.Close()
	if _, err := replica.RevokeKey(t.Context(), k.ID, time.Now()); err != nil {
		t.Fatalf("RevokeKey on the other replica: %v", err)
	}
	revoked := time.Now()
	for {
		r := get(t, "/v1/emails", bearer(k.Key))
		if r.status != http.StatusOK {
			assertRejected(t, r, revokedKey)
			t.Logf("rejected %v after another replica revoked it", time.Since(revoked).Round(100*time.Microsecond))
			break
		}
		if time.Since(revoked) > time.Second {
			t.Fatalf("key still admitted %v after another replica revoked it; want rejected within 1s", time.Since(revoked))
		}
		time.Sleep(2 * time.Millisecond)
	}
	expectAdmitted(t, backend, other.Key, "/v1/emails")
}

// TestPostgresGatewayOutage: the gateway reaches PostgreSQL through a
// proxy that then hangs. Cached keys keep working, uncached ones get 503
// after lookup_timeout, never 401; once the feed is lost, a key revoked
// meanwhile by another replica is rejected as soon as the store answers
// again, without waiting for the cache TTL.
func TestPostgresGatewayOutage(t *testing.T) {
	dsn := testenv.Postgres(t)
	p := testenv.NewProxy(t, testenv.PostgresAddr(t, dsn))
	t.Setenv("POSTSCALE_TEST_GATEWAY_DSN", testenv.ThroughProxy(t, dsn, p.Addr()))
	replica, err := postscale.OpenPostgresStore(t.Context(), dsn)
	if err != nil {
		t.Fatalf("opening the store as another replica: %v", err)
	}
	defer replica.Close()

	backend := newRecorder(t, "mail")
	loadCaddyfile(t, fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		store postgres {env.POSTSCALE_TEST_GATEWAY_DSN}
		cache_ttl 10m
		lookup_timeout 300ms
	}
	reverse_proxy %s
}
`, backend.addr()))
	createAccount(t, "acme", "growth")
	cached := createKey(t, "acme", "warm", "live")
	uncached := createKey(t, "acme", "cold", "live")
	// Twice, a moment apart: this gateway also hears its own key
	// creations' notifications, which may arrive after the first request
	// and drop its entry once more.
	expectAdmitted(t, backend, cached.Key, "/v1/emails")
	time.Sleep(300 * time.Millisecond)
	expectAdmitted(t, backend, cached.Key, "/v1/emails")

	p.Swallow()
	t.Run("uncached key", func(t *testing.T) {
		start := time.Now()
		expectRejected(t, backend, storeUnavailable, "/v1/emails", bearer(uncached.Key))
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("503 took %v, want about lookup_timeout (300ms)", d)
		}
	})
	t.Run("cached key keeps working", func(t *testing.T) {
		// Also after the feed is lost (within ~2s) and the entry is
		// looked up again, which fails: the cached entry is kept.
		for range 4 {
			expectAdmitted(t, backend, cached.Key, "/v1/emails")
			time.Sleep(time.Second)
		}
	})

	// Revoked while this gateway cannot hear it.
	if _, err := replica.RevokeKey(t.Context(), cached.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	p.Pass()
	healed := time.Now()
	for {
		r := get(t, "/v1/emails", bearer(cached.Key))
		if r.status != http.StatusOK {
			assertRejected(t, r, revokedKey)
			t.Logf("revocation made during the outage took effect %v after the store answered again", time.Since(healed).Round(time.Millisecond))
			break
		}
		if time.Since(healed) > 10*time.Second {
			t.Fatalf("key revoked during the outage still admitted %v after the store answers again", time.Since(healed))
		}
		time.Sleep(20 * time.Millisecond)
	}
	expectAdmitted(t, backend, uncached.Key, "/v1/emails")
}

// A reload that changes the DSN but not the database (a rotated password,
// here a new application_name standing in for it) moves the gateway onto
// the new settings: once the old connections are gone, every connection
// it opens, the change feed's included, uses the new DSN.
func TestPostgresReloadWithNewDSN(t *testing.T) {
	dsn := testenv.Postgres(t)
	withApp := func(name string) string { return dsn + "&application_name=" + name }
	backend := newRecorder(t, "mail")
	site := func(d string) string {
		return fmt.Sprintf(`:{$POSTSCALE_TEST_HTTP_PORT} {
	postscale {
		store postgres %q
	}
	reverse_proxy %s
}
`, d, backend.addr())
	}
	loadCaddyfile(t, site(withApp("psold")))
	createAccount(t, "acme", "growth")
	reload(t, site(withApp("psnew")), false)

	admin, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(t.Context())
	// The old config's connections end, as when a password is rotated and
	// the old sessions are closed.
	if _, err := admin.Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'psold'`); err != nil {
		t.Fatal(err)
	}
	k := createKey(t, "acme", "after reload", "live") // a write and a lookup, through the pool
	expectAdmitted(t, backend, k.Key, "/v1/emails")
	count := func(app string) int {
		var n int
		if err := admin.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1`, app).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	took, ok := waitFor(10*time.Second, func() bool { return count("psold") == 0 && count("psnew") >= 2 })
	if !ok {
		t.Errorf("after reloading with a new DSN: %d connections on the old settings, %d on the new (after %v); want none and at least 2 (pool and change feed)",
			count("psold"), count("psnew"), took)
	}
}
