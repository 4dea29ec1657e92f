package postscale

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// sqliteTestPollInterval keeps Watch tests fast.
const sqliteTestPollInterval = 20 * time.Millisecond

// openTestSQLite opens the store at path as the CLI does, with a short poll
// interval, and closes it when the test ends.
func openTestSQLite(t testing.TB, path string) *SQLiteStore {
	t.Helper()
	s, err := OpenSQLiteStore(path)
	if err != nil {
		t.Fatalf("OpenSQLiteStore(%s): %v", path, err)
	}
	s.PollInterval = caddy.Duration(sqliteTestPollInterval)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// sqliteUserVersion reads PRAGMA user_version through the store's pool.
func sqliteUserVersion(t *testing.T, s *SQLiteStore) int {
	t.Helper()
	var v int
	if err := s.db.QueryRowContext(t.Context(), `PRAGMA user_version`).Scan(&v); err != nil {
		t.Fatalf("reading user_version: %v", err)
	}
	return v
}

func TestSQLiteStoreContract(t *testing.T) {
	testStoreContract(t, func(t *testing.T) Store {
		return openTestSQLite(t, filepath.Join(t.TempDir(), "keys.db"))
	})
}

// A CLI process and the server open the same file: what one writes the
// other reads at once and its Watch reports.
func TestSQLiteTwoStoresShareFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	cli := openTestSQLite(t, path)
	server := openTestSQLite(t, path)
	ctx := t.Context()

	if got, want := server.Identity(), cli.Identity(); got != want {
		t.Errorf("Identity() of two stores on one file = %q and %q, want equal", got, want)
	}
	if got, want := cli.Identity(), "sqlite:"+path; got != want {
		t.Errorf("Identity() = %q, want %q", got, want)
	}

	acct := contractCreateAccount(t, cli, "acme")
	if got, err := server.GetAccount(ctx, "acme"); err != nil {
		t.Fatalf("GetAccount on the other store: %v", err)
	} else {
		contractCheckAccount(t, "GetAccount on the other store", got, acct)
	}

	w := contractStartWatch(t, server)
	w.sync(t, cli, "acme")

	from := w.mark()
	k := contractCreateKey(t, cli, "acme", contractT0)
	got, gotAcct, err := server.LookupKey(ctx, k.Hash)
	if err != nil {
		t.Fatalf("LookupKey on the other store: %v", err)
	}
	contractCheckKey(t, "LookupKey on the other store", got, k)
	contractCheckAccount(t, "LookupKey on the other store, account", gotAcct, acct)
	w.waitFor(t, "CreateKey on the other store", k.Hash, from)

	from = w.mark()
	at := contractT0.Add(time.Hour)
	if _, err := cli.RevokeKey(ctx, k.ID, at); err != nil {
		t.Fatalf("RevokeKey: %v", err)
	}
	got, _, err = server.LookupKey(ctx, k.Hash)
	if err != nil {
		t.Fatalf("LookupKey on the other store after RevokeKey: %v", err)
	}
	if got.RevokedAt == nil || !got.RevokedAt.Equal(at) {
		t.Errorf("LookupKey on the other store after RevokeKey: RevokedAt = %s, want %s",
			contractFmtTimePtr(got.RevokedAt), contractFmtTime(at))
	}
	w.waitFor(t, "RevokeKey on the other store", k.Hash, from)
}

// Two handles on one file, each with many goroutines writing at once: every
// write succeeds, because transactions take the write lock up front and a
// writer waits (busy_timeout) for the other instead of failing with
// SQLITE_BUSY.
func TestSQLiteConcurrentWriters(t *testing.T) {
	const (
		handles    = 2
		goroutines = 20
		perG       = 3
	)
	path := filepath.Join(t.TempDir(), "keys.db")
	stores := make([]*SQLiteStore, handles)
	for i := range stores {
		stores[i] = openTestSQLite(t, path)
	}
	contractCreateAccount(t, stores[0], "acme")

	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		errs  = make(chan error, handles*goroutines*perG)
	)
	for h, s := range stores {
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for i := range perG {
					k := contractNewKey(t, "acme", ModeLive, contractT0.Add(time.Duration(h*goroutines*perG+g*perG+i)*time.Millisecond))
					if err := s.CreateKey(t.Context(), k); err != nil {
						errs <- fmt.Errorf("handle %d goroutine %d key %d: %w", h, g, i, err)
					}
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("CreateKey: %v", err)
	}

	for i, s := range stores {
		keys, err := s.ListKeys(t.Context(), "acme")
		if err != nil {
			t.Fatalf("ListKeys on handle %d: %v", i, err)
		}
		if got, want := len(keys), handles*goroutines*perG; got != want {
			t.Errorf("ListKeys on handle %d: %d keys, want %d", i, got, want)
		}
	}
}

// Opening a file again does not migrate it again, and the schema version
// counts the migrations.
func TestSQLiteMigrationIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	var created []KeyRecord
	for i := range 3 {
		s, err := OpenSQLiteStore(path)
		if err != nil {
			t.Fatalf("open #%d: %v", i+1, err)
		}
		if got, want := sqliteUserVersion(t, s), len(sqliteMigrations); got != want {
			t.Errorf("open #%d: user_version = %d, want %d", i+1, got, want)
		}
		if i == 0 {
			contractCreateAccount(t, s, "acme")
		}
		// What earlier opens wrote is still there.
		keys, err := s.ListKeys(t.Context(), "acme")
		if err != nil {
			t.Errorf("open #%d: ListKeys: %v", i+1, err)
		} else if len(keys) != len(created) {
			t.Errorf("open #%d: ListKeys returned %d keys, want %d", i+1, len(keys), len(created))
		}
		created = append(created, contractCreateKey(t, s, "acme", contractT0.Add(time.Duration(i)*time.Second)))
		if err := s.Close(); err != nil {
			t.Fatalf("close #%d: %v", i+1, err)
		}
	}
}

// Two processes starting at once on a new file: the migration runs in one
// write transaction, so neither fails.
func TestSQLiteConcurrentFirstOpen(t *testing.T) {
	const n = 4
	path := filepath.Join(t.TempDir(), "keys.db")
	var wg sync.WaitGroup
	stores := make([]*SQLiteStore, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			stores[i], errs[i] = OpenSQLiteStore(path)
		}()
	}
	close(start)
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Errorf("open #%d: %v", i+1, errs[i])
			continue
		}
		if got, want := sqliteUserVersion(t, s), len(sqliteMigrations); got != want {
			t.Errorf("open #%d: user_version = %d, want %d", i+1, got, want)
		}
		t.Cleanup(func() { s.Close() })
	}
}

// The store file holds key hashes: it is the owner's alone, and its
// directory is made when missing.
func TestSQLiteFilePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "postscale")
	path := filepath.Join(dir, "keys.db")
	s := openTestSQLite(t, path)
	// Write something, so that the WAL holds data too.
	contractCreateAccount(t, s, "acme")
	contractCreateKey(t, s, "acme", contractT0)

	t.Run("Directory", func(t *testing.T) {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatalf("store directory: %v", err)
		}
		if !fi.IsDir() {
			t.Fatalf("%s is %v, want a directory", dir, fi.Mode())
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("store directory mode = %v, want no access for group and others (0700)", perm)
		}
	})

	t.Run("File", func(t *testing.T) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatalf("store file: %v", err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("store file mode = %v, want %v", got, os.FileMode(0o600))
		}
	})

	// The WAL holds recent writes (key hashes) until a checkpoint, so it
	// must be no more readable than the database file itself.
	t.Run("WAL", func(t *testing.T) {
		for _, suffix := range []string{"-wal", "-shm"} {
			fi, err := os.Stat(path + suffix)
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", suffix, err)
			}
			if got := fi.Mode().Perm(); got&0o077 != 0 {
				t.Errorf("%s file mode = %v while the store is open, want no access for group and others (0600)", path+suffix, got)
			}
		}
	})
}

// A database migrated by a newer build is not touched by this one.
func TestSQLiteRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	s, err := OpenSQLiteStore(path)
	if err != nil {
		t.Fatalf("OpenSQLiteStore: %v", err)
	}
	newer := len(sqliteMigrations) + 1
	if _, err := s.db.ExecContext(t.Context(), fmt.Sprintf(`PRAGMA user_version = %d`, newer)); err != nil {
		t.Fatalf("setting user_version: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s, err = OpenSQLiteStore(path)
	if err == nil {
		s.Close()
		t.Fatalf("OpenSQLiteStore(database at schema version %d, this build knows %d) succeeded, want an error",
			newer, len(sqliteMigrations))
	}
	t.Logf("OpenSQLiteStore: %v", err)

	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	defer db.Close()
	var v int
	if err := db.QueryRowContext(t.Context(), `PRAGMA user_version`).Scan(&v); err != nil {
		t.Fatalf("reading user_version: %v", err)
	}
	if v != newer {
		t.Errorf("user_version after the refused open = %d, want it left at %d", v, newer)
	}
}

// BenchmarkSQLiteRecordUsage measures a usage flush of 10,000 keys (what
// the keyring writes every 10 s when that many keys were used): ns/op is
// one key's share.
func BenchmarkSQLiteRecordUsage(b *testing.B) {
	s := openTestSQLite(b, filepath.Join(b.TempDir(), "keys.db"))
	if err := s.CreateAccount(b.Context(), Account{ID: "acme", Plan: "growth"}); err != nil {
		b.Fatal(err)
	}
	recs := make([]KeyRecord, 10_000)
	usage := make([]Usage, len(recs))
	for i := range recs {
		key, _ := NewKey(ModeLive)
		id, _ := newID("key_")
		recs[i] = KeyRecord{ID: id, Account: "acme", Name: "k", Mode: ModeLive, Hash: HashKey(key), Redacted: Redact(key), CreatedAt: time.Now()}
		usage[i] = Usage{KeyID: id, Requests: 3, LastUsed: time.Now()}
	}
	if err := s.CreateKeys(b.Context(), recs); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for n := b.N; n > 0; n -= len(usage) {
		if err := s.RecordUsage(b.Context(), usage[:min(n, len(usage))]); err != nil {
			b.Fatal(err)
		}
	}
}
