package postscale

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"
)

// RedisLimiter keeps one token bucket per account and mode in Redis, shared
// by every replica of the gateway, so that a plan holds for the whole
// fleet. Each decision is one Lua script run in Redis on Redis's clock, so
// replicas whose clocks disagree still agree on every bucket. A bucket's
// key expires when the bucket would be full again, so Redis holds only the
// accounts that are active.
//
// # Falling back
//
// When Redis answers with an error or not within Timeout, this replica
// stops asking it: it logs the switch once, decides that request and every
// later one in memory, and pings Redis once a second until it answers,
// then goes back to it (logged once too). Only the requests that find
// Redis failing wait for it, Timeout at most; none fails for it.
//
// In fallback each replica holds its share of every plan: a bucket of
// ceil(burst/replicas) refilling at rate/replicas, so the fleet together
// stays near the plan while no replica knows what the others admit. The
// headers then describe that share bucket; RateLimit-Policy still names
// the plan.
//
// The share buckets are one set per Redis URL and prefix, kept across
// outages and config reloads. A bucket first seen in fallback starts full
// at its share; one left from an earlier outage keeps what it had (idle
// ones are dropped once full again, which is the same). So a Redis that
// flaps refills nobody: each outage resumes the shares where the last one
// left them. Starting them empty instead would refuse the first requests of
// every account at the start of each outage, clients that did nothing
// wrong, with Retry-After up to replicas/rate seconds.
//
// The cost, precisely: take N replicas, a plan of burst B and rate R, and
// one outage of length D seen by every replica. Redis is not told what the
// replicas admitted during the outage, and they do not see its bucket. In
// any window of length T that contains the outage, an account is admitted
// at most
//
//	B + R·T          what the plan allows: Redis's bucket outside the
//	                 outage, and the shares' refill (R together) in it
//	+ N·ceil(B/N)    the share buckets, first seen full (at most B+N-1)
//	+ min(B, R·D)    what Redis's bucket refills during the outage,
//	                 while the shares hand out that same rate
//
// and, on top, any request in flight when Redis stopped answering that
// Redis counted before its answer was lost (it is decided again locally).
// So about one extra burst per outage, and a second one when an outage
// longer than B/R ends; fewer when the shares were already in use from an
// earlier outage, and only the falling-back replicas' shares when Redis
// is lost by some replicas but not others. Replicas must match the number
// of replicas actually running, or the shares are too big or too small.
//
// Keys are Prefix + "bucket:" + mode + ":" + account id, e.g.
// postscale:bucket:live:acct_123, a hash of the tokens left, the Redis time
// (µs) they were counted at, and the rate, burst and plan name they were
// counted under (see takeScript). Account ids are unique only within a key store: gateways on
// different stores that share a Redis need different prefixes.
type RedisLimiter struct {
	// URL names the Redis server: redis://[user:password@]host:port/db,
	// rediss://… for TLS, or unix:///path/to/socket. Placeholders such as
	// {env.POSTSCALE_REDIS_URL} are replaced at provision. Query options
	// of go-redis's URL format are honoured, except that the timeouts and
	// retries are the limiter's own. Required.
	URL string `json:"url"`

	// Replicas is how many gateway replicas share the limits; in fallback
	// each holds 1/Replicas of every plan. Default: 1.
	Replicas int `json:"replicas,omitempty"`

	// Timeout bounds one decision in Redis; past it the replica falls back
	// to its share. It is also the timeout of connecting, and of each
	// ping while falling back. A reload that changes it opens a new
	// connection (the share buckets carry over). Default: 50ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Prefix starts the name of every key the limiter writes.
	// Default: "postscale:".
	Prefix string `json:"prefix,omitempty"`

	shared    *redisShared
	poolKey   redisPoolKey
	shares    *buckets
	sharesKey redisSharesKey
	timeout   time.Duration
	keyPrefix [3]string // Prefix + "bucket:<mode>:", by mode
}

// Defaults of the RedisLimiter's optional fields.
const (
	DefaultRedisReplicas = 1
	DefaultRedisTimeout  = 50 * time.Millisecond
	DefaultRedisPrefix   = "postscale:"
)

// redisProbeInterval is how often a replica in fallback pings Redis.
const redisProbeInterval = time.Second

// CaddyModule returns the Caddy module information.
func (RedisLimiter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "postscale.limiters.redis",
		New: func() caddy.Module { return new(RedisLimiter) },
	}
}

// Provision checks the fields, and connects to Redis or joins the
// connection an earlier config opened for the same URL and prefix. An
// unreachable Redis is not an error: the limiter starts in fallback.
func (l *RedisLimiter) Provision(ctx caddy.Context) error {
	if err := registerCollectors(ctx.GetMetricsRegistry(), metricsLimiterFallback()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	return l.open(ctx, ctx.Logger())
}

// open is Provision without Caddy's metrics registry, for tests.
func (l *RedisLimiter) open(ctx context.Context, logger *zap.Logger) error {
	if l.Replicas < 0 {
		return fmt.Errorf("replicas must be at least 1, got %d", l.Replicas)
	}
	if l.Replicas == 0 {
		l.Replicas = DefaultRedisReplicas
	}
	if l.Timeout < 0 {
		return fmt.Errorf("timeout must not be negative, got %s", time.Duration(l.Timeout))
	}
	if l.Timeout == 0 {
		l.Timeout = caddy.Duration(DefaultRedisTimeout)
	}
	if l.Prefix == "" {
		l.Prefix = DefaultRedisPrefix
	}
	l.timeout = time.Duration(l.Timeout)
	for _, m := range []Mode{ModeLive, ModeTest} {
		l.keyPrefix[m] = l.Prefix + "bucket:" + m.String() + ":"
	}

	if l.URL == "" {
		return errors.New("url is required")
	}
	// An unknown or empty placeholder is an error, not an empty string:
	// redis://:{env.REDIS_PASSWORD}@host with the variable unset would
	// otherwise connect without a password and fall back for good.
	rawURL, err := caddy.NewReplacer().ReplaceOrErr(l.URL, true, true)
	if err != nil {
		return fmt.Errorf("url: %w", err)
	}
	if rawURL == "" {
		return fmt.Errorf("url: %s is empty once its placeholders are replaced", l.URL)
	}
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return fmt.Errorf("url: %w", withoutURL(err))
	}
	// Every wait is bounded by the timeout, and nothing is retried: a
	// request asks Redis once, and a failure means falling back.
	opts.ContextTimeoutEnabled = true
	opts.MaxRetries = -1 // -1: none (0 means the default, 3)
	opts.DialerRetries = 1
	opts.DialTimeout = l.timeout
	opts.ReadTimeout = l.timeout
	opts.WriteTimeout = l.timeout
	opts.PoolTimeout = l.timeout

	l.sharesKey = redisSharesKey{url: rawURL, prefix: l.Prefix}
	v, _, err := redisShareSets.LoadOrNew(l.sharesKey, func() (caddy.Destructor, error) {
		b := newBuckets()
		b.run()
		return b, nil
	})
	if err != nil {
		return err
	}
	l.shares = v.(*buckets)
	l.poolKey = redisPoolKey{redisSharesKey: l.sharesKey, timeout: l.timeout}
	v, _, err = redisPools.LoadOrNew(l.poolKey, func() (caddy.Destructor, error) {
		return newRedisShared(ctx, opts, l.timeout, logger), nil
	})
	if err != nil {
		_, _ = redisShareSets.Delete(l.sharesKey)
		l.shares = nil
		return err
	}
	l.shared = v.(*redisShared)
	// The latest config's logger serves the shared pinger: an older
	// config's logger may be closed once it is unloaded.
	l.shared.logger.Store(logger)
	return nil
}

// withoutURL strips the URL, which may hold a password, from a URL parse
// error, keeping the reason.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Take implements Limiter: one script run in Redis, or, while Redis is
// failing, a decision on this replica's share.
func (l *RedisLimiter) Take(ctx context.Context, b bucketKey, lim *limit, now time.Time) state {
	if l.shared.fallback.Load() {
		return l.takeShare(b, lim, now)
	}
	res, err := l.run(ctx, []string{l.keyPrefix[b.mode] + b.account}, lim)
	if err == nil {
		var t takeAnswer
		if t, err = parseTake(res, false); err == nil {
			return decided(t.admitted, t.tokens, lim)
		}
	}
	l.failed(ctx, err)
	return l.takeShare(b, lim, now)
}

// TakeQuota implements quotaTaker: the bucket and the quota counter of a
// live request that counts, decided in one script run in Redis, so the
// fleet never admits more than the quota. It returns ok false, having
// decided nothing, while Redis fails: the caller then decides on its own
// counter and Take.
func (l *RedisLimiter) TakeQuota(ctx context.Context, b bucketKey, lim *limit, q *quotaPolicy, c *quotaCounter, now time.Time) (st state, exceeded, ok bool) {
	if l.shared.fallback.Load() {
		return state{}, false, false
	}
	key := l.Prefix + "quota:" + b.account + ":" + string(q.Period) + ":" + strconv.FormatInt(c.start/int64(time.Second), 10)
	res, err := l.run(ctx, []string{l.keyPrefix[b.mode] + b.account, key}, lim,
		q.Count, c.end/int64(time.Millisecond)+quotaKeySlack.Milliseconds(), c.used.Load())
	if err == nil {
		var t takeAnswer
		if t, err = parseTake(res, true); err == nil {
			c.learnUsed(t.used)
			if t.admitted {
				c.unflushed.Add(1)
			}
			return decided(t.admitted, t.tokens, lim), t.exceeded, true
		}
	}
	l.failed(ctx, err)
	return state{}, false, false
}

// quotaKeySlack is how long a quota counter stays in Redis after its
// period ends, for replicas whose clocks are behind.
const quotaKeySlack = time.Hour

// run runs takeScript for lim on keys, with extra arguments after the
// bucket's (a quota's).
func (l *RedisLimiter) run(ctx context.Context, keys []string, lim *limit, extra ...any) ([]any, error) {
	var since int64
	if !lim.since.IsZero() {
		since = lim.since.UnixMicro()
	}
	args := append([]any{float64(lim.rate), lim.burst, since, lim.name}, extra...)
	return l.shared.do(ctx, keys, args)
}

// Decisions go to Redis through a few sender goroutines, each sending
// what has queued up while its last round trip was out as one pipeline:
// one write and one read for all of them, where one round trip per
// decision cost each its own system calls and wake-ups (about 60 µs of
// CPU a decision on the development machine, as much as proxying the
// request). A decision alone is sent alone, at once; nothing waits for a
// batch to fill.
const (
	redisSenders  = 2
	redisMaxBatch = 64
	redisQueue    = 1024
)

// errLimiterClosed answers the decisions still queued when the limiter's
// connection is closed (a config unloaded while they ran).
var errLimiterClosed = errors.New("redis limiter closed")

// redisCall is one decision waiting for its sender.
type redisCall struct {
	keys []string
	args []any
	res  []any
	err  error
	done chan struct{} // one value, from the sender, once res and err are set
}

var redisCalls = sync.Pool{New: func() any { return &redisCall{done: make(chan struct{}, 1)} }}

// do runs takeScript with keys and args through a sender and returns its
// answer. A decision waits at most for the batch before it and its own,
// each bounded by the timeout.
func (s *redisShared) do(ctx context.Context, keys []string, args []any) ([]any, error) {
	c := redisCalls.Get().(*redisCall)
	c.keys, c.args = keys, args
	select {
	case s.queue <- c:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.done:
		return nil, errLimiterClosed
	}
	select {
	case <-c.done:
	case <-s.done:
		// The senders have stopped; a sender answers every call it took
		// before it stops, so this one was never taken.
		return nil, errLimiterClosed
	}
	res, err := c.res, c.err
	*c = redisCall{done: c.done}
	redisCalls.Put(c)
	return res, err
}

// send takes calls off the queue and sends them, until ctx ends.
func (s *redisShared) send(ctx context.Context) {
	batch := make([]*redisCall, 0, redisMaxBatch)
	cmds := make([]*redis.Cmd, 0, redisMaxBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-s.queue:
			batch = append(batch[:0], c)
		}
	more:
		for len(batch) < redisMaxBatch {
			select {
			case c := <-s.queue:
				batch = append(batch, c)
			default:
				break more
			}
		}
		cmds = s.runBatch(ctx, batch, cmds[:0])
		for _, c := range batch {
			c.done <- struct{}{}
		}
		clear(batch)
		clear(cmds)
	}
}

// runBatch runs takeScript for each call, in one round trip, within the
// timeout, and sets each call's answer.
func (s *redisShared) runBatch(ctx context.Context, batch []*redisCall, cmds []*redis.Cmd) []*redis.Cmd {
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if len(batch) == 1 {
		c := batch[0]
		c.res, c.err = takeScript.Run(rctx, s.client, c.keys, c.args...).Slice()
		return cmds
	}
	pipe := s.client.Pipeline()
	for _, c := range batch {
		cmds = append(cmds, pipe.EvalSha(rctx, takeScript.Hash(), c.keys, c.args...))
	}
	_, _ = pipe.Exec(rctx) // each command has its own error
	for i, c := range batch {
		c.res, c.err = cmds[i].Slice()
		if c.err != nil && redis.HasErrorPrefix(c.err, "NOSCRIPT") {
			// Redis lost its scripts (a restart, SCRIPT FLUSH): Run
			// sends the script itself, and loads it for the next ones.
			c.res, c.err = takeScript.Run(rctx, s.client, c.keys, c.args...).Slice()
		}
	}
	return cmds
}

// failed handles a script run that gave no usable answer.
func (l *RedisLimiter) failed(ctx context.Context, err error) {
	s := l.shared
	var reply redis.Error
	switch {
	case ctx.Err() != nil:
		// The client went away: no reason to stop asking Redis.
	case errors.As(err, &reply):
		// Redis answered, with an error about this command (a key of the
		// wrong type, out of memory, read-only after a failover, an ACL):
		// Redis is up, so its PING would answer and a switch would flap.
		// Decide this request locally, and say so now and then.
		s.replyFailed(err)
	default:
		s.fallBack(err) // no answer: fall back until a ping answers
	}
}

// replyWarnEvery bounds the warnings about Redis answering the script with
// an error: at most one per interval.
const replyWarnEvery = time.Minute

// replyFailed logs an error answer of Redis, at most once per
// replyWarnEvery.
func (s *redisShared) replyFailed(err error) {
	if !s.replyWarned.due(replyWarnEvery) {
		return
	}
	s.logger.Load().Warn("redis limiter: Redis answers the limiter script with an error; those requests are decided locally on this replica's share",
		zap.String("addr", s.addr), zap.Error(err), zap.Duration("next_warning_after", replyWarnEvery))
}

// takeAnswer is the script's answer.
type takeAnswer struct {
	admitted bool
	tokens   float64
	exceeded bool  // the quota refused the request (quota runs only)
	used     int64 // the quota period's count after the request
}

// parseTake reads the script's answer: {1 or 0, tokens left as a string},
// and with a quota {…, 1 if the quota refused it, the period's count}.
func parseTake(res []any, quota bool) (takeAnswer, error) {
	var t takeAnswer
	want := 2
	if quota {
		want = 4
	}
	if len(res) != want {
		return t, fmt.Errorf("limiter script: %d values in its answer, want %d", len(res), want)
	}
	a, ok := res[0].(int64)
	tok, ok2 := res[1].(string)
	if !ok || !ok2 {
		return t, fmt.Errorf("limiter script: answer of types %T, %T, want integer, string", res[0], res[1])
	}
	tokens, err := strconv.ParseFloat(tok, 64)
	if err != nil {
		return t, fmt.Errorf("limiter script: tokens: %w", err)
	}
	t.admitted, t.tokens = a == 1, tokens
	if quota {
		x, ok := res[2].(int64)
		u, ok2 := res[3].(int64)
		if !ok || !ok2 {
			return t, fmt.Errorf("limiter script: quota answer of types %T, %T, want integers", res[2], res[3])
		}
		t.exceeded, t.used = x == 1, u
	}
	return t, nil
}

// takeShare decides on this replica's share of lim, in memory. The share
// is a copy of lim on the stack, keeping its name and policy.
func (l *RedisLimiter) takeShare(b bucketKey, lim *limit, now time.Time) state {
	if l.Replicas <= 1 {
		return l.shares.take(b, lim, now)
	}
	share := *lim
	share.rate = lim.rate / rate.Limit(l.Replicas)
	share.burst = (lim.burst + l.Replicas - 1) / l.Replicas
	return l.shares.take(b, &share, now)
}

// Cleanup releases this config's hold on the connection and the share
// buckets.
func (l *RedisLimiter) Cleanup() error {
	if l.shared == nil {
		return nil
	}
	_, err := redisPools.Delete(l.poolKey)
	_, err2 := redisShareSets.Delete(l.sharesKey)
	return errors.Join(err, err2)
}

// UnmarshalCaddyfile sets up the Redis limiter from the tokens after
// "limiter". Syntax:
//
//	redis <url> {
//	    replicas <n>
//	    timeout <duration>
//	    prefix <string>
//	}
//
// Each option may be given once; the block may be left out.
func (l *RedisLimiter) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume backend name
	if !d.NextArg() {
		return d.Errf("url: missing; want redis <url> [{ <options> }]")
	}
	l.URL = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		name := d.Val()
		switch name {
		case "replicas", "timeout", "prefix":
		default:
			return d.Errf("unrecognized redis limiter option %q", name)
		}
		if seen[name] {
			return d.Errf("%s: given more than once", name)
		}
		seen[name] = true
		if !d.NextArg() {
			return d.Errf("%s: missing value", name)
		}
		val := d.Val()
		if d.NextArg() {
			return d.Errf("%s: takes one value, got more", name)
		}
		switch name {
		case "replicas":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 {
				return d.Errf("replicas: must be a whole number, at least 1, got %q", val)
			}
			l.Replicas = n
		case "timeout":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 {
				return d.Errf("timeout: must be a positive duration, got %q", val)
			}
			l.Timeout = caddy.Duration(dur)
		case "prefix":
			if val == "" {
				return d.Errf("prefix: must not be empty")
			}
			l.Prefix = val
		}
	}
	return nil
}

// redisSharesKey identifies a set of share buckets: the same Redis and
// prefix mean the same buckets.
type redisSharesKey struct{ url, prefix string }

// redisShareSets holds the share buckets per redisSharesKey across config
// reloads, so a reload gives nobody a fresh share.
var redisShareSets = caddy.NewUsagePool()

// redisPoolKey identifies a connection: its buckets, and the timeout its
// sockets were opened with.
type redisPoolKey struct {
	redisSharesKey
	timeout time.Duration
}

// redisPools holds a redisShared per redisPoolKey across config reloads,
// so a reload keeps the connections.
var redisPools = caddy.NewUsagePool()

// redisShared is what the configs of one redisPoolKey share: the client,
// and whether Redis is failing.
type redisShared struct {
	client  *redis.Client
	addr    string        // host:port, for the logs (the URL may hold a password)
	timeout time.Duration // of a ping

	// fallback is set while Redis is failing: requests then decide on the
	// shares without touching Redis. Requests only read it; switching it
	// (once per outage) takes mu, which Destruct also takes, so that
	// requests still running on a closed client neither log a failure
	// nor leave the gauge up.
	fallback atomic.Bool
	// queue holds the decisions waiting for a sender (see do).
	queue  chan *redisCall
	mu     sync.Mutex
	closed bool
	// fell wakes the pinger when fallback is set.
	fell chan struct{}
	// replyWarned paces the warnings about Redis's error answers.
	replyWarned sometimes

	logger atomic.Pointer[zap.Logger]

	// cancel stops the pinger and the senders; done is closed once they
	// have stopped.
	cancel context.CancelFunc
	done   chan struct{}
}

func newRedisShared(ctx context.Context, opts *redis.Options, timeout time.Duration, logger *zap.Logger) *redisShared {
	s := &redisShared{
		client:  redis.NewClient(opts),
		addr:    opts.Addr,
		timeout: timeout,
		fell:    make(chan struct{}, 1),
		queue:   make(chan *redisCall, redisQueue),
		done:    make(chan struct{}),
	}
	s.logger.Store(logger)
	// Loading the script now spares the first request a NOSCRIPT round
	// trip, and tells whether Redis answers at all.
	lctx, cancel := context.WithTimeout(ctx, timeout)
	err := takeScript.Load(lctx, s.client).Err()
	cancel()
	if err != nil {
		s.fallBack(err)
	}
	pctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	var running sync.WaitGroup
	running.Go(func() { s.ping(pctx) })
	for range redisSenders {
		running.Go(func() { s.send(pctx) })
	}
	go func() {
		running.Wait()
		close(s.done)
	}()
	return s
}

// fallBack switches to the shares, once per outage.
func (s *redisShared) fallBack(err error) {
	if s.fallback.Load() {
		return // requests that were in flight together with the first
	}
	s.mu.Lock()
	if s.closed || s.fallback.Load() {
		s.mu.Unlock()
		return
	}
	s.fallback.Store(true)
	metricsLimiterFallback().Inc()
	s.mu.Unlock()
	s.logger.Load().Warn("redis limiter failing; each replica now decides locally on its share of the plans until Redis answers",
		zap.String("addr", s.addr), zap.Error(err))
	select {
	case s.fell <- struct{}{}:
	default: // the pinger has been woken already
	}
}

// ping waits for a fallback, then pings Redis once a second until it
// answers and switches back, until ctx ends.
func (s *redisShared) ping(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.fell:
		}
		if !s.pingUntilBack(ctx) {
			return
		}
	}
}

// pingUntilBack pings Redis once a second while falling back, and switches
// back once it answers. It returns false when ctx ended first.
func (s *redisShared) pingUntilBack(ctx context.Context) bool {
	t := time.NewTicker(redisProbeInterval)
	defer t.Stop()
	for s.fallback.Load() {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		if err := s.probe(ctx); err != nil {
			if c := s.logger.Load().Check(zapcore.DebugLevel, "redis limiter still failing"); c != nil {
				c.Write(zap.String("addr", s.addr), zap.Error(err))
			}
			continue
		}
		s.mu.Lock()
		back := !s.closed && s.fallback.Load()
		if back {
			s.fallback.Store(false)
			metricsLimiterFallback().Dec()
		}
		s.mu.Unlock()
		if back {
			s.logger.Load().Info("redis limiter answers again; deciding in Redis", zap.String("addr", s.addr))
		}
	}
	return true
}

// probe pings Redis once, turning a panic into an error.
func (s *redisShared) probe(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic while pinging redis: %v", p)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.client.Ping(ctx).Err()
}

// Destruct stops the pinger and the senders and closes the client;
// the pool calls it when the last config using them is unloaded.
func (s *redisShared) Destruct() error {
	s.mu.Lock()
	s.closed = true
	if s.fallback.Load() {
		metricsLimiterFallback().Dec()
	}
	s.mu.Unlock()
	s.cancel()
	<-s.done
	return s.client.Close()
}

// takeScript decides one request of a bucket in Redis, on Redis's clock.
// It mirrors buckets.take and bucket.tokensAt (which see) so both limiters
// give the same answers: refill since the last admitted request; under
// another definition of the limit, carry the used amount over into a
// bucket of the new size from the time the new limit came into force,
// cutting it down to the new burst only when the plan's name changed; and
// admit if a token is there. It writes only when it admits, so a refused
// request changes nothing, and the key expires when the bucket would be
// full again.
//
// KEYS[1] the bucket; ARGV rate (per second), burst, since (unix µs of the
// limit's start, 0 for none), plan name. Fields: t tokens, ts unix µs
// (Redis time) of the last admitted request, r and b the rate and burst t
// was counted under, n the plan name. Returns {1 admitted or 0, tokens left}; tokens
// as a string, since Redis truncates Lua numbers to integers.
//
// With a quota, KEYS[2] is the quota period's counter and ARGV goes on
// with the quota's count, the unix ms at which the counter expires, and
// the count the replica knows (which starts a counter Redis lost). The
// quota is checked first: a request it refuses takes no token and writes
// nothing. A request the bucket admits adds one to the counter. Returns
// {admitted, tokens, 1 if the quota refused it else 0, the count}.
var takeScript = redis.NewScript(`
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local since = tonumber(ARGV[3])
local name = ARGV[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local used = -1
if KEYS[2] then
  used = tonumber(redis.call('GET', KEYS[2]) or '-1')
  if used < 0 then used = tonumber(ARGV[7]) end
  if used >= tonumber(ARGV[5]) then
    return {0, '0', 1, used}
  end
end

local tokens = burst -- a new bucket is full
local v = redis.call('HMGET', KEYS[1], 't', 'ts', 'r', 'b', 'n')
local left, ts, orate, oburst = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
if left and ts and orate and oburst then
  if now < ts then now = ts end -- a failover to a server whose clock is behind
  if orate == rate and oburst == burst then
    tokens = math.min(burst, left + (now - ts) / 1e6 * rate)
  else
    -- Another definition: what was used by the switch carries over.
    local switched = math.min(math.max(since, ts), now)
    local used = oburst - math.min(oburst, left + (switched - ts) / 1e6 * orate)
    -- Cut to the new burst only for another plan (a key written before
    -- names were kept has none: not cut).
    if v[5] and v[5] ~= name then used = math.min(used, burst) end
    tokens = math.min(burst, burst - used + (now - switched) / 1e6 * rate)
  end
end

local admitted = 0
-- As x/time/rate: admitted when the wait for one token is under 1ns.
if (1 - tokens) / rate * 1e9 < 1 then
  admitted = 1
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens),
    'ts', string.format('%.17g', now), 'r', ARGV[1], 'b', ARGV[2],
    'n', name)
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) / rate * 1000)))
  if KEYS[2] then
    used = used + 1
    redis.call('SET', KEYS[2], used)
    redis.call('PEXPIREAT', KEYS[2], ARGV[6])
  end
end
if KEYS[2] then
  return {admitted, string.format('%.17g', tokens), 0, used}
end
return {admitted, string.format('%.17g', tokens)}
`)

// Interface guards.
var (
	_ Limiter               = (*RedisLimiter)(nil)
	_ quotaTaker            = (*RedisLimiter)(nil)
	_ caddy.Provisioner     = (*RedisLimiter)(nil)
	_ caddy.CleanerUpper    = (*RedisLimiter)(nil)
	_ caddyfile.Unmarshaler = (*RedisLimiter)(nil)
	_ caddy.Destructor      = (*redisShared)(nil)
)
