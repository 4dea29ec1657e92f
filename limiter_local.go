package postscale

import (
	"context"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// LocalLimiter keeps the token buckets in this process: one per account
// and mode, shared by every handler on the same store and kept across
// config reloads. It is the default limiter. With several replicas each
// has its own buckets, so N replicas admit up to N times the plan; use the
// redis limiter there.
type LocalLimiter struct {
	buckets  *buckets
	identity string // of the store the buckets belong to
}

// CaddyModule returns the Caddy module information.
func (LocalLimiter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "postscale.limiters.local",
		New: func() caddy.Module { return new(LocalLimiter) },
	}
}

func (l *LocalLimiter) bind(storeIdentity string) error {
	b, err := loadBuckets(storeIdentity)
	if err != nil {
		return err
	}
	l.buckets, l.identity = b, storeIdentity
	return nil
}

// Take implements Limiter.
func (l *LocalLimiter) Take(_ context.Context, b bucketKey, lim *limit, now time.Time) state {
	return l.buckets.take(b, lim, now)
}

// Cleanup releases this config's hold on the buckets.
func (l *LocalLimiter) Cleanup() error {
	if l.buckets == nil {
		return nil
	}
	_, err := bucketSets.Delete(l.identity)
	return err
}

// Interface guards.
var (
	_ Limiter            = (*LocalLimiter)(nil)
	_ storeBound         = (*LocalLimiter)(nil)
	_ caddy.CleanerUpper = (*LocalLimiter)(nil)
)
