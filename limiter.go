package postscale

import (
	"context"
	"time"
)

// Limiter decides whether a request fits its account's plan. Limiters are
// guest modules in the postscale.limiters namespace: local (the default,
// buckets in this process) and redis (one bucket per account and mode for
// every replica, in Redis). The handler does not know which one it has.
//
// A Limiter is safe for concurrent use. It has no errors to return: a
// limiter whose backend fails decides locally instead, so a limiter outage
// never turns into a 5xx.
type Limiter interface {
	// Take admits one request of bucket b under limit l, or refuses it
	// without consuming anything, and says what the bucket holds for the
	// RateLimit fields. now is the request's time; a limiter that keeps
	// its buckets elsewhere may use that system's clock instead. ctx is
	// the request's context.
	Take(ctx context.Context, b bucketKey, l *limit, now time.Time) state
}

// storeBound is a Limiter that keeps its buckets per key store (the local
// one: account ids are unique only within a store). The handler calls bind
// once, after provisioning the limiter, with its store's identity.
type storeBound interface {
	bind(storeIdentity string) error
}
