package postscale

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
)

// outcome is the result of checking one request. Every outcome maps to one
// row of the contract's error table (README, Errors) in rejections below.
type outcome uint8

const (
	outcomeAdmitted outcome = iota
	outcomeMissing
	// outcomeWrongScheme is an Authorization header that holds something
	// other than a Bearer credential (a key without the word Bearer, or
	// Basic): the same 401 missing_api_key as no header, with a message
	// that says what to fix.
	outcomeWrongScheme
	outcomeInvalid
	outcomeRevoked
	outcomeExpired
	outcomeMultipleAuth
	outcomeCredentialsInURL
	outcomeUnavailable
	outcomeRateLimited
	outcomeUnknownPlan
	outcomeForbidden // built per scope rule: see scopeRule
	outcomeInternal  // the handler could not decide: see Handler.failed
	outcomeThrottled // too many guesses from the client's address (failed_auth)
	outcomeQuotaExceeded
	numOutcomes
)

// rejection is a ready-made error response: built once at init, so that a
// flood of bad requests costs no allocation for the body.
type rejection struct {
	status     int
	wwwAuth    string // WWW-Authenticate, or empty
	retryAfter string // Retry-After, or empty
	body       []byte
	length     string // Content-Length
}

const (
	challenge        = `Bearer realm="postscale"`
	challengeInvalid = `Bearer realm="postscale", error="invalid_token"`
	challengeRequest = `Bearer realm="postscale", error="invalid_request"`
)

var rejections [numOutcomes]rejection

// newRejection builds an error response once, for writing many times.
func newRejection(status int, wwwAuth, retryAfter, typ, code, message string) rejection {
	var doc struct {
		Error struct {
			Type    string `json:"type"`
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	doc.Error.Type, doc.Error.Code, doc.Error.Message = typ, code, message
	// An encoder that leaves <, > and & as they are, so that a message
	// reads as written ('Bearer <key>', not 'Bearer \u003ckey\u003e'); its
	// newline ends the body, so a curl in a terminal ends its line.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		panic(err) // strings always encode
	}
	body := buf.Bytes()
	return rejection{status: status, wwwAuth: wwwAuth, retryAfter: retryAfter, body: body, length: strconv.Itoa(len(body))}
}

func init() {
	def := func(o outcome, status int, wwwAuth, retryAfter, typ, code, message string) {
		rejections[o] = newRejection(status, wwwAuth, retryAfter, typ, code, message)
	}
	def(outcomeMissing, http.StatusUnauthorized, challenge, "",
		"authentication_error", "missing_api_key",
		"No API key provided. Send your key in the Authorization header: 'Authorization: Bearer ps_live_…'.")
	def(outcomeWrongScheme, http.StatusUnauthorized, challenge, "",
		"authentication_error", "missing_api_key",
		"The Authorization header does not use the Bearer scheme, so no API key was read from it. Put the word Bearer and a space before the key: 'Authorization: Bearer ps_live_…'.")
	def(outcomeInvalid, http.StatusUnauthorized, challengeInvalid, "",
		"authentication_error", "invalid_api_key",
		"The API key is not valid. Check that you copied the whole key (ps_live_… or ps_test_…) and that it has not been mistyped.")
	def(outcomeRevoked, http.StatusUnauthorized, challengeInvalid, "",
		"authentication_error", "revoked_api_key",
		"This API key has been revoked. Create a new key and use it instead.")
	def(outcomeExpired, http.StatusUnauthorized, challengeInvalid, "",
		"authentication_error", "expired_api_key",
		"This API key has expired. Use the key that replaced it, or create a new one.")
	def(outcomeMultipleAuth, http.StatusBadRequest, challengeRequest, "",
		"invalid_request_error", "invalid_request",
		"The request has more than one Authorization header. Send exactly one: 'Authorization: Bearer <key>'.")
	def(outcomeCredentialsInURL, http.StatusBadRequest, challengeRequest, "",
		"invalid_request_error", "credentials_in_url",
		"API keys must not be sent in the URL, where they end up in logs and browser history. Remove the key from the query string, send it in the Authorization header, and consider rotating it.")
	def(outcomeUnavailable, http.StatusServiceUnavailable, "", "1",
		"api_error", "store_unavailable",
		"The key store is temporarily unavailable, so the API key could not be checked. Retry after the time in the Retry-After header.")
	def(outcomeRateLimited, http.StatusTooManyRequests, "", "",
		"rate_limit_error", "rate_limit_exceeded",
		"Too many requests for your plan's rate limit. Wait the number of seconds in the Retry-After header before retrying; the RateLimit header shows what is left.")
	def(outcomeUnknownPlan, http.StatusServiceUnavailable, "", "",
		"api_error", "plan_not_configured",
		"Your account's plan is not configured on this gateway, so the request cannot be rate-limited and was not sent. This is a server-side problem; contact support.")
	def(outcomeQuotaExceeded, http.StatusTooManyRequests, "", "",
		"rate_limit_error", "quota_exceeded",
		"Your account has used its sending quota for this period. Wait the number of seconds in the Retry-After header, when the next period starts, or ask for a larger quota; test keys (ps_test_…) keep working.")
	def(outcomeThrottled, http.StatusTooManyRequests, "", "",
		"rate_limit_error", "too_many_failed_attempts",
		"Too many requests with unknown API keys came from your address. Requests with keys not recently used from here are refused until the time in the Retry-After header has passed; check which key your client sends.")
	def(outcomeInternal, http.StatusInternalServerError, "", "",
		"api_error", "internal_error",
		"The gateway could not check this request because of a problem on its side, so it was not sent. Retry later; if it keeps happening, contact support.")
}

// writeRejection writes the error response of an outcome. With write, it
// is the one place where an auth failure becomes an HTTP response.
func writeRejection(w http.ResponseWriter, o outcome) { rejections[o].write(w) }

func (r *rejection) write(w http.ResponseWriter) {
	// One array of values per response: a header handler may rewrite a
	// value in place, which must not reach the shared rejection.
	vals := [...]string{"application/json", r.length, "no-store", r.wwwAuth, r.retryAfter}
	h := w.Header()
	h["Content-Type"] = vals[0:1:1]
	h["Content-Length"] = vals[1:2:2]
	h["Cache-Control"] = vals[2:3:3]
	if r.wwwAuth != "" {
		h["Www-Authenticate"] = vals[3:4:4]
	}
	if r.retryAfter != "" {
		h["Retry-After"] = vals[4:5:5]
	}
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}
