package postscale

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus collectors. They are created once
// per process and registered in each config's metrics registry, so counts
// carry across reloads. Labels never name an account or a key.
var metrics = struct {
	once           sync.Once
	requests       *prometheus.CounterVec // outcome, mode, plan
	cacheHits      prometheus.Counter
	cacheMisses    prometheus.Counter
	storeLookups   prometheus.Counter
	lookupDuration prometheus.Histogram
	// limiterFallback counts the redis limiters (by URL and prefix) that
	// are deciding locally because Redis fails: 1 while the one falls back.
	limiterFallback prometheus.Gauge
	// early counts the outcomes decided before any key is known (missing,
	// invalid, ...), resolved once so that a flood of them is cheap.
	early [numOutcomes]prometheus.Counter
}{}

// outcomeLabels are the outcome label values of requests_total.
var outcomeLabels = [numOutcomes]string{
	outcomeAdmitted:         "admitted",
	outcomeMissing:          "missing",
	outcomeWrongScheme:      "missing",
	outcomeInvalid:          "invalid",
	outcomeRevoked:          "revoked",
	outcomeExpired:          "expired",
	outcomeMultipleAuth:     "invalid",
	outcomeCredentialsInURL: "invalid",
	outcomeUnavailable:      "unavailable",
	outcomeRateLimited:      "rate_limited",
	outcomeUnknownPlan:      "unavailable",
	outcomeForbidden:        "forbidden",
	outcomeInternal:         "error",
	outcomeThrottled:        "throttled",
	outcomeQuotaExceeded:    "quota_exceeded",
}

func initMetrics() {
	metrics.once.Do(func() {
		const ns, sub = "caddy", "postscale"
		metrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Requests checked by the gateway, by outcome, key mode and plan.",
		}, []string{"outcome", "mode", "plan"})
		metrics.cacheHits = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "cache_hits_total",
			Help: "Key lookups answered from the in-memory cache.",
		})
		metrics.cacheMisses = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "cache_misses_total",
			Help: "Key lookups the cache could not answer.",
		})
		metrics.storeLookups = prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "store_lookups_total",
			Help: "Key lookups sent to the store (concurrent misses of one key share one).",
		})
		metrics.lookupDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "store_lookup_duration_seconds",
			Help:    "Time a key lookup in the store took.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100µs to ~26s
		})
		metrics.limiterFallback = prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "limiter_fallback",
			Help: "Redis limiters deciding locally, on each replica's share of the plans, because Redis fails (0 normally; a count, so it can exceed 1 while a reload runs two).",
		})
		for o, label := range outcomeLabels {
			metrics.early[o] = metrics.requests.WithLabelValues(label, "", "")
		}
	})
}

// registerMetrics adds the collectors to a config's registry; a second
// registration (several handlers in one config) is not an error.
func registerMetrics(reg *prometheus.Registry) error {
	initMetrics()
	return registerCollectors(reg, metrics.requests, metrics.cacheHits, metrics.cacheMisses, metrics.storeLookups, metrics.lookupDuration)
}

// registerCollectors adds collectors to a config's registry (nil: none),
// taking one already there as registered.
func registerCollectors(reg *prometheus.Registry, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// metricsLimiterFallback returns the fallback gauge, which only the redis
// limiter registers.
func metricsLimiterFallback() prometheus.Gauge {
	initMetrics()
	return metrics.limiterFallback
}

// countOutcome counts a request whose key's mode and plan are known.
func countOutcome(o outcome, mode Mode, plan string) {
	metrics.requests.WithLabelValues(outcomeLabels[o], mode.String(), plan).Inc()
}
