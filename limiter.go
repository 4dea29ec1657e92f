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

// quotaTaker is a Limiter that keeps every replica's quota counts beside
// its buckets (Redis) and decides a request's quota and bucket in one
// step, so the fleet never admits more than the quota. TakeQuota is Take
// for a live request that counts towards quota q, whose period c is in
// this process: it reports whether the quota refused the request (then
// no token was taken), and raises c to the fleet's count. ok false means
// it decided nothing (its backend fails): the caller decides on c and Take.
type quotaTaker interface {
	TakeQuota(ctx context.Context, b bucketKey, l *limit, q *quotaPolicy, c *quotaCounter, now time.Time) (st state, exceeded, ok bool)
}
