// Command perfkit is bench/perf.sh's helper: it makes the keys of the
// configurations that need many, with the module's exported API (so they
// are the gateway's own: NewKey, right form, right checksum), times a cold
// start, and prints the summary of a run's results.
//
//	perfkit store -store keys.db -keys 1000000 -per-account 10 -plan perf -hot 100000 -hot-out hot.txt
//	    fills a fresh SQLite store with live keys (see seedStore for how)
//	    and writes the first -hot of them, in plaintext, one a line, to -hot-out (a file in perf.sh's
//	    temporary directory, read by wrk's script; never printed).
//	perfkit madeup -n 200000 -out flood.txt
//	    well-formed live keys (valid checksum) that no store holds.
//	perfkit badsum -n 10000 -out bad.txt
//	    live keys whose checksum is wrong.
//	perfkit first -url http://127.0.0.1:8080/v1/emails -key-file hot.txt -since <unix ns>
//	    sends the first key of the file (POST, as wrk does) every
//	    millisecond until the answer is 202 and prints the milliseconds
//	    from -since to that answer: the cold start.
//	perfkit warm -url http://127.0.0.1:8080/v1/emails -key-file hot.txt -conns 16
//	    sends each key of the file once and fails unless each is admitted
//	    (202): the check that every hot key works, and it puts them all in
//	    the gateway's cache before the load.
//	perfkit summary -in <dir>
//	    prints the medians of results.tsv and extras.tsv and the ratios to
//	    bare Caddy (see summary.go).
package main

import (
	"bufio"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	postscale "github.com/postscale/caddy-postscale"
	_ "modernc.org/sqlite" // the driver the store uses
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: perfkit store|madeup|badsum|first|warm|summary [flags]"))
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "store":
		err = seedStore(args)
	case "madeup":
		err = writeKeys(args, func(k string) string { return k })
	case "badsum":
		err = writeKeys(args, spoilChecksum)
	case "first":
		err = firstAdmitted(args)
	case "warm":
		err = warm(args)
	case "summary":
		err = summary(args)
	default:
		err = fmt.Errorf("unknown command %q: want store, madeup, badsum, first, warm or summary", cmd)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "perfkit:", err)
	os.Exit(1)
}

// seedStore creates the accounts and keys. The store's own Open creates
// the schema; the rows then go in through that schema directly, in one
// transaction with prepared statements. Store.CreateAccount commits once
// per account and Store.CreateKeys writes a change row per key and parses
// each statement again: about 45 s of CPU for a million keys, against
// about 10 s this way. A fresh store has no watcher, so it needs no change
// rows.
func seedStore(args []string) error {
	fs := flag.NewFlagSet("store", flag.ExitOnError)
	path := fs.String("store", "", "SQLite store file (created)")
	n := fs.Int("keys", 1_000_000, "keys to create")
	perAccount := fs.Int("per-account", 10, "keys per account")
	plan := fs.String("plan", "perf", "the accounts' plan")
	hot := fs.Int("hot", 100_000, "keys to write to -hot-out")
	hotOut := fs.String("hot-out", "", "file for the plaintext of the hot keys")
	_ = fs.Parse(args)
	if *path == "" || *hotOut == "" || *perAccount < 1 {
		return fmt.Errorf("store: -store and -hot-out are required, -per-account ≥ 1")
	}
	st, err := postscale.OpenSQLiteStore(*path) // creates the schema
	if err != nil {
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", "file:"+*path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	out, err := os.OpenFile(*hotOut, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)

	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := time.Now().UnixNano()
	insAccount, err := tx.Prepare(`INSERT INTO accounts (id, plan, created_at) VALUES (?, ?, ?)`)
	if err != nil {
		return err
	}
	insKey, err := tx.Prepare(`INSERT INTO keys (id, hash, account, name, mode, redacted, created_at) VALUES (?, ?, ?, 'seed', 'live', ?, ?)`)
	if err != nil {
		return err
	}
	accounts := (*n + *perAccount - 1) / *perAccount
	for a := range accounts {
		if _, err := insAccount.Exec(accountID(a), *plan, now); err != nil {
			return fmt.Errorf("account %d: %w", a, err)
		}
	}
	for i := range *n {
		key, err := postscale.NewKey(postscale.ModeLive)
		if err != nil {
			return err
		}
		if i < *hot {
			fmt.Fprintln(w, key)
		}
		h := postscale.HashKey(key)
		// Key i goes to account i mod accounts, so the hot keys (the
		// first ones) spread over every account.
		if _, err := insKey.Exec("key_seed"+strconv.Itoa(i), h[:], accountID(i%accounts), postscale.Redact(key), now); err != nil {
			return fmt.Errorf("key %d: %w", i, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return out.Close()
}

func accountID(i int) string { return "acct_seed" + strconv.Itoa(i) }

// writeKeys writes -n new live keys, each passed through edit, to -out.
func writeKeys(args []string, edit func(string) string) error {
	fs := flag.NewFlagSet("keys", flag.ExitOnError)
	n := fs.Int("n", 100_000, "keys")
	outPath := fs.String("out", "", "file to write, one key a line")
	_ = fs.Parse(args)
	out, err := os.OpenFile(*outPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)
	for range *n {
		key, err := postscale.NewKey(postscale.ModeLive)
		if err != nil {
			return err
		}
		fmt.Fprintln(w, edit(key))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return out.Close()
}

// spoilChecksum changes the key's last character, which is part of its
// checksum, so the key is well-formed but its checksum is wrong.
func spoilChecksum(key string) string {
	last := key[len(key)-1]
	repl := byte('A')
	if last == 'A' {
		repl = 'B'
	}
	return key[:len(key)-1] + string(repl)
}

// firstAdmitted polls until the gateway admits the key.
func firstAdmitted(args []string) error {
	fs := flag.NewFlagSet("first", flag.ExitOnError)
	url := fs.String("url", "", "URL to POST to")
	keyFile := fs.String("key-file", "", "file whose first line is the key")
	since := fs.Int64("since", 0, "start time, Unix nanoseconds")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after")
	_ = fs.Parse(args)
	b, err := os.ReadFile(*keyFile)
	if err != nil {
		return err
	}
	key, _, _ := strings.Cut(string(b), "\n")
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		if status, err := post(client, *url, key); err == nil && status == http.StatusAccepted {
			fmt.Printf("%.1f\n", float64(time.Now().UnixNano()-*since)/1e6)
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("no 202 from %s within %s", *url, *timeout)
}

// post sends a small email with the key and returns the answer's status.
func post(client *http.Client, url, key string) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{}`))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// warm sends every key of the file once, from -conns goroutines.
func warm(args []string) error {
	fs := flag.NewFlagSet("warm", flag.ExitOnError)
	url := fs.String("url", "", "URL to POST to")
	keyFile := fs.String("key-file", "", "file of keys, one a line")
	conns := fs.Int("conns", 16, "requests at once")
	_ = fs.Parse(args)
	b, err := os.ReadFile(*keyFile)
	if err != nil {
		return err
	}
	keys := strings.Fields(string(b))
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: *conns}}
	next := make(chan string)
	var bad atomic.Int64
	var wg sync.WaitGroup
	for range *conns {
		wg.Go(func() {
			for key := range next {
				if status, err := post(client, *url, key); err != nil || status != http.StatusAccepted {
					bad.Add(1)
				}
			}
		})
	}
	for _, k := range keys {
		next <- k
	}
	close(next)
	wg.Wait()
	if n := bad.Load(); n > 0 {
		return fmt.Errorf("%d of %d keys were not admitted (202)", n, len(keys))
	}
	return nil
}
