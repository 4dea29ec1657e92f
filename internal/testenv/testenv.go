// Package testenv gives tests their own PostgreSQL database and Redis key
// prefix on the servers named by environment variables, and a TCP proxy
// that injects faults between the gateway and those servers.
//
//	POSTSCALE_TEST_POSTGRES  a PostgreSQL URL whose user may create databases,
//	                         e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable
//	POSTSCALE_TEST_REDIS     a Redis URL, e.g. redis://127.0.0.1:6379/0
//
// Without them (or when the server does not answer) a test is skipped
// with a message saying what to set, except in CI (CI=true), where it
// fails: CI must never pass by skipping.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// Environment variables that name the test servers.
const (
	PostgresEnv = "POSTSCALE_TEST_POSTGRES"
	RedisEnv    = "POSTSCALE_TEST_REDIS"
)

// need skips the test, or fails it in CI, because a server is missing.
func need(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: tests that need a server must run)", msg)
	}
	t.Skipf("%s; skipping", msg)
}

// uniqueName returns prefix followed by 12 random hex digits.
func uniqueName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// Postgres creates a database of the test's own on the server named by
// POSTSCALE_TEST_POSTGRES and returns a DSN for it. The database is dropped
// when the test ends.
func Postgres(t testing.TB) string {
	t.Helper()
	base := os.Getenv(PostgresEnv)
	if base == "" {
		need(t, "%s is not set (a PostgreSQL URL whose user may create databases)", PostgresEnv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		need(t, "PostgreSQL at %s does not answer: %v", PostgresEnv, err)
	}
	defer admin.Close(context.Background())
	name := uniqueName("postscale_test_")
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating test database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Errorf("dropping test database %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping test database %s: %v", name, err)
		}
	})
	return withDatabase(t, base, name)
}

// withDatabase returns the DSN base with its database replaced by name.
func withDatabase(t testing.TB, base, name string) string {
	if !strings.Contains(base, "://") {
		return base + " dbname=" + name // keyword/value form: the last one wins
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", PostgresEnv, err)
	}
	u.Path = "/" + name
	return u.String()
}

// Redis returns the URL of the server named by POSTSCALE_TEST_REDIS and a
// key prefix of the test's own. Every key under the prefix is deleted when
// the test ends.
func Redis(t testing.TB) (redisURL, prefix string) {
	t.Helper()
	redisURL = os.Getenv(RedisEnv)
	if redisURL == "" {
		need(t, "%s is not set (a Redis URL such as redis://127.0.0.1:6379/0)", RedisEnv)
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatalf("%s: %v", RedisEnv, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := redis.NewClient(opts)
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		need(t, "Redis at %s does not answer: %v", RedisEnv, err)
	}
	prefix = uniqueName("postscale_test_") + ":"
	t.Cleanup(func() {
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Errorf("deleting test keys %s*: %v", prefix, err)
		}
	})
	return redisURL, prefix
}

// RedisAddr returns host:port of the server named by POSTSCALE_TEST_REDIS,
// for a Proxy in front of it.
func RedisAddr(t testing.TB, redisURL string) string {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatalf("%s: %v", RedisEnv, err)
	}
	return opts.Addr
}

// ThroughProxy returns redisURL (or a PostgreSQL URL) with its host:port
// replaced by addr.
func ThroughProxy(t testing.TB, rawURL, addr string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parsing %q: %v", rawURL, err)
	}
	u.Host = addr
	return u.String()
}

// PostgresAddr returns host:port of a PostgreSQL URL, for a Proxy.
func PostgresAddr(t testing.TB, dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parsing %q: %v", dsn, err)
	}
	return fmt.Sprintf("%s:%d", cfg.Host, cfg.Port)
}
