package postscale

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
)

func registerCommand() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "postscale",
		Usage: "account|key <command> [flags]",
		Short: "Manages Postscale accounts and API keys",
		Long: `
Manages the accounts and API keys of the Postscale gateway.

When a Caddy instance runs, the commands go through its admin endpoint
(found like 'caddy reload' finds it: --address, or the admin address in
--config, or ` + caddy.DefaultAdminListen + `), so the instance applies a
revocation before the command returns.

Only when nothing listens at that address (connection refused) do they
open a store directly, saying which on stderr: the store of the postscale
handler in --config (read as 'caddy run' reads it, with --adapter), or
without --config the default one, postscale/keys.db in Caddy's data
directory. A timeout or an unknown host is an error, not a reason to
fall back. ` + "`--store`" + ` names a store to use directly in any case: a
SQLite file or a PostgreSQL URL (postgres://…). Running servers pick a
change made directly up within a second (PostgreSQL pushes it to them at
once). Commands that only read (show, list) never create a store.

  caddy postscale account create acme --plan growth
  caddy postscale key create --account acme --name "production server"
  caddy postscale key list --account acme
  caddy postscale key roll key_… --expires-in 24h
  caddy postscale key revoke key_…
  caddy postscale key revoke --key - < leaked-key.txt

'key create' prints the key alone on stdout, so a script can capture it;
it is shown this once and never again.

A key is never an argument: given where an id belongs, it is refused
before anything is sent, and only its redacted form is shown. To revoke a
key by the key itself, use 'key revoke --key -', which reads it from
stdin.

Without a running instance, a plan can be checked against the postscale
handlers only if --config names the gateway's config; else a plan other
than starter, growth, scale or enterprise is stored with a warning.`,
		CobraFunc: func(cmd *cobra.Command) {
			pf := cmd.PersistentFlags()
			pf.String("address", "", "Address of the administration API listener (if --config is not used)")
			pf.StringP("config", "c", "", "Configuration file to read the admin address from (if --address is not used)")
			pf.StringP("adapter", "a", "", "Name of config adapter to apply (if --config is used)")
			pf.String("store", "", "Store to use directly instead of a running instance: a SQLite file path, or a PostgreSQL URL (postgres://…)")
			// A flag's error quotes its value, which could be a key.
			cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
				return errors.New(scrubKeys(err.Error()))
			})
			cmd.AddCommand(accountCommand(), keyCommand(), uiCommand())
		},
	})
}

func accountCommand() *cobra.Command {
	account := &cobra.Command{Use: "account", Short: "Creates and shows accounts"}

	create := &cobra.Command{
		Use:   "create <id> --plan <plan> [--rate <req/s> [--burst <n>]] [--quota <count>/day|month] [--quota-anchor <time>]",
		Short: "Creates an account on a plan (starter, growth, scale, or enterprise with --rate)",
		Args:  cobra.ExactArgs(1),
		RunE: withManager(func(ctx context.Context, cmd *cobra.Command, m Manager, args []string) error {
			req := AccountRequest{ID: args[0]}
			req.Plan, _ = cmd.Flags().GetString("plan")
			req.Rate, _ = cmd.Flags().GetFloat64("rate")
			req.Burst, _ = cmd.Flags().GetInt("burst")
			if s, _ := cmd.Flags().GetString("quota"); s != "" {
				q, err := ParseQuota(s)
				if err != nil {
					return err
				}
				req.Quota = &q
			}
			if s, _ := cmd.Flags().GetString("quota-anchor"); s != "" {
				t, err := parseTime("--quota-anchor", s)
				if err != nil {
					return err
				}
				req.QuotaAnchor = &t
			}
			a, err := m.CreateAccount(ctx, req)
			if err != nil {
				return err
			}
			warnUncheckedPlan(cmd, m, req.Plan)
			return printJSON(cmd.OutOrStdout(), a)
		}),
	}
	create.Flags().String("plan", "starter", "Plan of the account")
	create.Flags().Float64("rate", 0, "Requests per second (enterprise plan only)")
	create.Flags().Int("burst", 0, "Burst size (enterprise plan only; default: the rate)")
	create.Flags().String("quota", "", "The account's own quota over its plan's: <count>/day or <count>/month, e.g. 50000/month")
	create.Flags().String("quota-anchor", "", "Start of the account's quota periods, its billing day (RFC 3339; default: now)")

	show := printing("show <id>", "Shows an account", Manager.GetAccount)
	update := &cobra.Command{
		Use:   "update <id> [--plan <plan>] [--rate <req/s>] [--burst <n>] [--quota <count>/day|month|none] [--quota-anchor <time>|none]",
		Short: "Changes an account's plan or custom limits; gateways apply it on its next request",
		Args:  cobra.ExactArgs(1),
		RunE: withManager(func(ctx context.Context, cmd *cobra.Command, m Manager, args []string) error {
			fl := cmd.Flags()
			var req AccountUpdate
			if fl.Changed("plan") {
				v, _ := fl.GetString("plan")
				req.Plan = &v
			}
			if fl.Changed("rate") {
				v, _ := fl.GetFloat64("rate")
				req.Rate = &v
			}
			if fl.Changed("burst") {
				v, _ := fl.GetInt("burst")
				req.Burst = &v
			}
			if fl.Changed("quota") {
				req.Quota.Set = true
				if v, _ := fl.GetString("quota"); v != "none" {
					q, err := ParseQuota(v)
					if err != nil {
						return err
					}
					req.Quota.Value = &q
				}
			}
			if fl.Changed("quota-anchor") {
				req.QuotaAnchor.Set = true
				if v, _ := fl.GetString("quota-anchor"); v != "none" {
					t, err := parseTime("--quota-anchor", v)
					if err != nil {
						return err
					}
					req.QuotaAnchor.Value = &t
				}
			}
			a, err := m.UpdateAccount(ctx, args[0], req)
			if err != nil {
				return err
			}
			if req.Plan != nil {
				warnUncheckedPlan(cmd, m, *req.Plan)
			}
			return printJSON(cmd.OutOrStdout(), a)
		}),
	}
	update.Flags().String("plan", "", "New plan")
	update.Flags().Float64("rate", 0, "Requests per second (enterprise plan only)")
	update.Flags().Int("burst", 0, "Burst size (enterprise plan only)")
	update.Flags().String("quota", "", "The account's own quota: <count>/day or <count>/month; none: back to the plan's")
	update.Flags().String("quota-anchor", "", "Start of the account's quota periods (RFC 3339); none: back to the account's creation")

	usage := printing("usage <id>",
		"Shows an account's quota period, its live and test counts, what is left, and its requests per hour for the last 48 hours",
		Manager.AccountUsage)
	account.AddCommand(create, show, update, usage)
	return account
}

// printing is a read-only command of one id argument that prints, as
// JSON, what get answers for it.
func printing[T any](use, short string, get func(Manager, context.Context, string) (T, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: withReader(func(ctx context.Context, cmd *cobra.Command, m Manager, args []string) error {
			v, err := get(m, ctx, args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), v)
		}),
	}
}

func keyCommand() *cobra.Command {
	key := &cobra.Command{Use: "key", Short: "Creates, lists, shows and revokes API keys"}

	create := &cobra.Command{
		Use:   "create --account <id> --name <name> [--mode live|test] [--expires-at <RFC 3339 time>] [--json]",
		Short: "Creates a key and prints it, this once, alone on stdout",
		Args:  cobra.NoArgs,
		RunE: withManager(func(ctx context.Context, cmd *cobra.Command, m Manager, _ []string) error {
			fl := cmd.Flags()
			var req KeyRequest
			req.Account, _ = fl.GetString("account")
			req.Name, _ = fl.GetString("name")
			req.Mode, _ = fl.GetString("mode")
			req.Scopes, _ = fl.GetStringSlice("scope")
			if s, _ := fl.GetString("expires-at"); s != "" {
				t, err := parseTime("--expires-at", s)
				if err != nil {
					return err
				}
				req.ExpiresAt = &t
			}
			k, err := m.CreateKey(ctx, req)
			if err != nil {
				return err
			}
			if asJSON, _ := fl.GetBool("json"); asJSON {
				return printJSON(cmd.OutOrStdout(), k)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Created %s key %s %q for account %s. Copy it now: it is not shown again.\n",
				k.Mode, k.ID, k.Name, k.Account)
			_, err = fmt.Fprintln(cmd.OutOrStdout(), k.Key)
			return err
		}),
	}
	create.Flags().String("account", "", "Account the key belongs to (required)")
	create.Flags().String("name", "", "What the key is for, e.g. \"production server\" (required)")
	create.Flags().String("mode", "live", "live (sends email) or test (never delivers)")
	create.Flags().StringSlice("scope", nil, "Scope the key is limited to (repeatable); none means full access")
	create.Flags().String("expires-at", "", "Time the key stops working (RFC 3339, before 2200-01-01T00:00:00Z)")
	create.Flags().Bool("json", false, "Print the whole record, key included, as JSON")

	list := &cobra.Command{
		Use:   "list --account <id>",
		Short: "Lists an account's keys (never the keys themselves)",
		Args:  cobra.NoArgs,
		RunE: withReader(func(ctx context.Context, cmd *cobra.Command, m Manager, _ []string) error {
			account, _ := cmd.Flags().GetString("account")
			keys, err := m.ListKeys(ctx, account)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), keys)
		}),
	}
	list.Flags().String("account", "", "Account whose keys to list (required)")

	show := &cobra.Command{
		Use:   "show <key id>",
		Short: "Shows a key's record",
		Args:  cobra.ExactArgs(1),
		RunE: withReader(func(ctx context.Context, cmd *cobra.Command, m Manager, args []string) error {
			k, err := m.GetKey(ctx, args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), k)
		}),
	}

	revoke := &cobra.Command{
		Use:   "revoke <key id> | revoke --key -",
		Short: "Revokes a key, by its id or by the key itself read from stdin: it stops working at once",
		Long: `Revokes a key: it stops working at once.

Give the key's id (key_…, as key list shows it), or, for a leaked key
whose id you do not know, --key - and the key itself on stdin (one line;
on a terminal it is read without being shown). The key is sent in the
body of the request, never in a URL, and is not printed.`,
		Args: func(cmd *cobra.Command, args []string) error {
			byKey, _ := cmd.Flags().GetString("key")
			switch {
			case byKey != "" && len(args) > 0:
				return errors.New("give a key id or --key -, not both")
			case byKey == "" && len(args) != 1:
				return errors.New("give the id of the key to revoke (key_…), or --key - to read the key itself from stdin")
			}
			return nil
		},
		RunE: withManager(func(ctx context.Context, cmd *cobra.Command, m Manager, args []string) error {
			var (
				k   KeyRecord
				err error
			)
			if byKey, _ := cmd.Flags().GetString("key"); byKey != "" {
				if byKey != "-" {
					return errors.New("--key takes - and reads the key from stdin, so that it stays out of the command line, the shell history and the process list")
				}
				var key string
				if key, err = readKey(cmd); err != nil {
					return err
				}
				k, err = m.RevokeByKey(ctx, key)
			} else {
				k, err = m.RevokeKey(ctx, args[0])
			}
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), k)
		}),
	}
	revoke.Flags().String("key", "", "- to read the key to revoke from stdin, instead of giving its id")
	roll := &cobra.Command{
		Use:   "roll <key id> [--expires-in <duration>] [--json]",
		Short: "Issues a replacement key and prints it alone on stdout; the old one works until --expires-in",
		Args:  cobra.ExactArgs(1),
		RunE: withManager(func(ctx context.Context, cmd *cobra.Command, m Manager, args []string) error {
			fl := cmd.Flags()
			var req RollRequest
			req.ExpiresIn, _ = fl.GetString("expires-in")
			k, err := m.RollKey(ctx, args[0], req)
			if err != nil {
				return err
			}
			if asJSON, _ := fl.GetBool("json"); asJSON {
				return printJSON(cmd.OutOrStdout(), k)
			}
			until := "now"
			if k.Replaces != nil && k.Replaces.ExpiresAt != nil {
				until = k.Replaces.ExpiresAt.Format(time.RFC3339)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Rolled %s: the replacement is %s. The old key works until %s. Copy the new key now: it is not shown again.\n",
				args[0], k.ID, until)
			_, err = fmt.Fprintln(cmd.OutOrStdout(), k.Key)
			return err
		}),
	}
	roll.Flags().String("expires-in", "24h", "How long the old key keeps working (0s: not at all)")
	roll.Flags().Bool("json", false, "Print the new record, key included, and the old one as JSON")

	importCmd := &cobra.Command{
		Use:   "import <file.csv|file.json>",
		Short: "Imports legacy keys (plaintext or SHA-256 hex) from CSV or JSON",
		Long: `Imports keys of the legacy system. They authenticate only with legacy_keys on.

CSV has a header row naming the columns account, name, mode, and key or
hash (scopes optional, space-separated). JSON is a list of objects with the
same fields, or {"keys": [...]}. Plaintext keys are hashed and never stored.`,
		Args: cobra.ExactArgs(1),
		RunE: withManager(func(ctx context.Context, cmd *cobra.Command, m Manager, args []string) error {
			req, lines, err := readImportFile(args[0])
			if err != nil {
				return err
			}
			res, err := m.ImportKeys(ctx, req)
			if err != nil {
				return atImportLine(err, args[0], lines)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Imported %d keys.\n", len(res.Imported))
			return printJSON(cmd.OutOrStdout(), res.Imported)
		}),
	}
	key.AddCommand(create, list, show, revoke, roll, importCmd)
	return key
}

// readKey reads the key to revoke from stdin: one line, read without echo
// on a terminal.
func readKey(cmd *cobra.Command) (string, error) {
	in := cmd.InOrStdin()
	var line string
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(cmd.ErrOrStderr(), "Key to revoke (not shown): ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(cmd.ErrOrStderr())
		if err != nil {
			return "", fmt.Errorf("reading the key from the terminal: %w", err)
		}
		line = string(b)
	} else {
		var err error
		line, err = bufio.NewReader(io.LimitReader(in, 4096)).ReadString('\n')
		if err != nil && err != io.EOF {
			return "", fmt.Errorf("reading the key from stdin: %w", err)
		}
	}
	key := strings.TrimSpace(line)
	if key == "" {
		return "", errors.New("--key -: stdin holds no key; give the key on one line, e.g. caddy postscale key revoke --key - < leaked-key.txt")
	}
	return key, nil
}

// warnUncheckedPlan says on stderr that plan was stored without the check
// against the handlers' plans, when m could not make it and the plan is
// not one every handler has.
func warnUncheckedPlan(cmd *cobra.Command, m Manager, plan string) {
	d, ok := m.(directManager)
	if !ok || d.plans != nil || slices.Contains(planNames(nil), plan) {
		return
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Warning: the plan %q is not built in and could not be checked: %s. "+
		"Unless a postscale handler defines it, every request of this account gets 503; give --config with the gateway's config to check it.\n",
		plan, d.unchecked)
}

// readImportFile reads legacy keys from CSV or JSON. For CSV it also
// returns the line each key was on, by its index in the request.
func readImportFile(path string) (ImportRequest, []int, error) {
	var (
		req   ImportRequest
		lines []int
	)
	data, err := os.ReadFile(path)
	if err != nil {
		return req, nil, err
	}
	trimmed := bytes.TrimSpace(data)
	switch {
	case bytes.HasPrefix(trimmed, []byte("[")):
		err = json.Unmarshal(trimmed, &req.Keys)
	case bytes.HasPrefix(trimmed, []byte("{")):
		err = json.Unmarshal(trimmed, &req)
	default:
		req.Keys, lines, err = readImportCSV(bytes.NewReader(data))
	}
	if err != nil {
		return req, nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return req, lines, nil
}

// importIndex finds the first keys[i] an import error names.
var importIndex = regexp.MustCompile(`keys\[(\d+)\]`)

// atImportLine puts the file and line of the CSV row that an import error
// is about (keys[i], as the instance or the store named it) before the
// error, so that it can be found in the file; the key itself is never
// shown.
func atImportLine(err error, path string, lines []int) error {
	m := importIndex.FindStringSubmatch(err.Error())
	if m == nil || lines == nil {
		return err
	}
	i, convErr := strconv.Atoi(m[1])
	if convErr != nil || i >= len(lines) {
		return err
	}
	return fmt.Errorf("%s, line %d: %w", path, lines[i], err)
}

func readImportCSV(r io.Reader) ([]ImportedKey, []int, error) {
	cr := csv.NewReader(r)
	var (
		rows  [][]string
		lines []int
	)
	for {
		row, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		line, _ := cr.FieldPos(0)
		rows, lines = append(rows, row), append(lines, line)
	}
	if len(rows) < 2 {
		return nil, nil, fmt.Errorf("want a header row (account,name,mode,key or hash) and at least one key")
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[strings.ToLower(strings.TrimSpace(name))] = i
	}
	for _, need := range []string{"account", "name"} {
		if _, ok := col[need]; !ok {
			return nil, nil, fmt.Errorf("header row has no %q column", need)
		}
	}
	get := func(row []string, name string) string {
		if i, ok := col[name]; ok && i < len(row) {
			return strings.TrimSpace(row[i])
		}
		return ""
	}
	keys := make([]ImportedKey, 0, len(rows)-1)
	for _, row := range rows[1:] {
		k := ImportedKey{Account: get(row, "account"), Name: get(row, "name"), Mode: get(row, "mode"), Key: get(row, "key"), Hash: get(row, "hash")}
		if sc := get(row, "scopes"); sc != "" {
			k.Scopes = strings.Fields(sc)
		}
		keys = append(keys, k)
	}
	return keys, lines[1:], nil
}

// printJSON prints v indented, and as written: a name such as "ci <eu>"
// shows as it is, not as \u003ceu\u003e.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// access says what a command does to the store.
type access int

const (
	// writes: the command may change the store, and creates a SQLite
	// store that does not exist yet (saying so).
	writes access = iota
	// readsOnly: the command only reads, and never creates or changes a
	// store; a missing one is an error.
	readsOnly
)

// withManager runs a subcommand that changes the store against the
// running instance's admin endpoint if one answers, else against the
// store directly. A key among the arguments or flags is refused before
// anything is opened or sent, and no error it returns shows a key.
func withManager(run func(context.Context, *cobra.Command, Manager, []string) error) func(*cobra.Command, []string) error {
	return withAccess(writes, run)
}

// withReader is withManager for a subcommand that only reads.
func withReader(run func(context.Context, *cobra.Command, Manager, []string) error) func(*cobra.Command, []string) error {
	return withAccess(readsOnly, run)
}

func withAccess(acc access, run func(context.Context, *cobra.Command, Manager, []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cmd.SilenceUsage = true
		if err := refuseKeys(cmd, args); err != nil {
			return err
		}
		if err := runManager(cmd, args, acc, run); err != nil {
			return errors.New(scrubKeys(err.Error()))
		}
		return nil
	}
}

// readConfigFlag reads the config that --config names (nil without one),
// as caddy run reads it: the file, adapted by --adapter (or the Caddyfile
// adapter for a file named Caddyfile).
func readConfigFlag(cmd *cobra.Command) ([]byte, error) {
	config, _ := cmd.Flags().GetString("config")
	adapter, _ := cmd.Flags().GetString("adapter")
	if config == "" {
		return nil, nil
	}
	cfg, _, _, err := caddycmd.LoadConfig(config, adapter)
	if err != nil {
		return nil, fmt.Errorf("reading --config %s: %v", config, err)
	}
	return cfg, nil
}

// adminAddress is the admin endpoint a command talks to: --address, or the
// admin address of the config cfg that --config names, or the default.
func adminAddress(cmd *cobra.Command, cfg []byte) (string, error) {
	address, _ := cmd.Flags().GetString("address")
	config, _ := cmd.Flags().GetString("config")
	adapter, _ := cmd.Flags().GetString("adapter")
	addr, err := caddycmd.DetermineAdminAPIAddress(address, cfg, config, adapter)
	if err != nil {
		return "", fmt.Errorf("finding the admin endpoint: %v", err)
	}
	return addr, nil
}

// runManager finds what the command works on and runs it there:
//
//   - with --store, that store, directly;
//   - else the running instance whose admin endpoint is at --address, or
//     at the admin address of --config, or at the default address;
//   - and only when nothing listens there (connection refused: no
//     instance runs), the store that the postscale handler of --config
//     uses, or the default store without --config, directly, saying so
//     on stderr.
//
// Any other failure to reach the admin endpoint (a timeout, an unknown
// host, a malformed address) is an error: the instance may well run, and
// a change made straight on a store it does not use would never reach it,
// while a revocation made on the one it uses would not yet be in force
// there when the command returns.
func runManager(cmd *cobra.Command, args []string, acc access, run func(context.Context, *cobra.Command, Manager, []string) error) error {
	storeName, _ := cmd.Flags().GetString("store")
	config, _ := cmd.Flags().GetString("config")
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	cfg, err := readConfigFlag(cmd)
	if err != nil {
		return err
	}
	if storeName == "" {
		addr, err := adminAddress(cmd, cfg)
		if err != nil {
			return err
		}
		notRunning, err := probeAdmin(addr)
		if err != nil {
			return err
		}
		if notRunning == "" {
			return run(ctx, cmd, adminClient{addr: addr}, args)
		}
		src, err := configStore(cfg, config)
		if err != nil {
			return fmt.Errorf("no Caddy admin endpoint at %s (%s), and %v", addr, notRunning, err)
		}
		storeName = src.name
		fmt.Fprintf(cmd.ErrOrStderr(), "No Caddy admin endpoint at %s (%s); using the store at %s (%s) directly.\n", addr, notRunning, src.shown, src.from)
	}
	m := directManager{storeManager: storeManager{now: time.Now}, unchecked: "no running instance answered, and no --config names the gateway's config"}
	if cfg != nil {
		plans, err := configPlans(cfg)
		if err != nil {
			return fmt.Errorf("reading the plans of --config %s: %v", config, err)
		}
		if m.plans = plans; plans == nil {
			m.unchecked = "the config " + config + " has no postscale handler"
		}
		if m.planQuotas, err = configPlanQuotas(cfg); err != nil {
			return fmt.Errorf("reading the plans of --config %s: %v", config, err)
		}
	}
	s, created, err := openStore(ctx, storeName, acc)
	if errors.Is(err, ErrNoStore) {
		return fmt.Errorf("%v. Nothing was created: a command that only reads never creates a store. Check --store or --config, or start the gateway (or create an account) to make the store", err)
	}
	if err != nil {
		return err
	}
	defer s.Close()
	if created != "" {
		fmt.Fprintf(cmd.ErrOrStderr(), "Created a new store at %s.\n", created)
	}
	noteGateways(cmd.ErrOrStderr(), storeName)
	m.store = s
	return run(ctx, cmd, m, args)
}

// noteGateways says on w which gateway processes on this host serve the
// SQLite store the command works on directly, and how to go through one
// instead: a mistyped --address lands here too.
func noteGateways(w io.Writer, storeName string) {
	if isPostgresDSN(storeName) {
		return
	}
	path, err := filepath.Abs(storeName)
	if err != nil {
		return
	}
	gs, err := gatewaysOf(path, false)
	if err != nil || len(gs) == 0 {
		return
	}
	through := ""
	if admin := gs[0].Admin; admin != "" && admin != "disabled" {
		through = "; to go through it, give --address " + admin
	}
	fmt.Fprintf(w, "Note: a running gateway serves this store (%s). It picks the change up within its poll_interval%s.\n",
		describeGateways(gs), through)
}

// adminDialTimeout bounds the CLI's check for a running instance. An admin
// endpoint on this host accepts at once; past this, something is wrong,
// and the command says so rather than fall back to a store.
const adminDialTimeout = 3 * time.Second

// dialAdmin connects to an admin endpoint (a variable for tests).
var dialAdmin = net.DialTimeout

// probeAdmin finds out whether a Caddy instance listens at the admin
// address addr: it returns "" when something accepts a connection there,
// and why not when clearly nothing listens (the connection was refused,
// or the unix socket does not exist). Any other outcome (a timeout, a
// host that does not resolve, a malformed address) is an error: the CLI
// cannot tell whether an instance runs, so it does nothing.
func probeAdmin(addr string) (notRunning string, err error) {
	na, err := caddy.ParseNetworkAddress(addr)
	if err == nil && na.PortRangeSize() > 1 {
		err = errors.New("a range of ports")
	}
	if err != nil {
		return "", fmt.Errorf("the admin address %q is not one address (%v). Nothing was done: check --address, or the admin address in --config; or give --store to work on a store directly", addr, err)
	}
	target := na.JoinHostPort(0)
	if na.IsUnixNetwork() {
		// A unix socket address may end in its permission bits: "|0220".
		if i := strings.LastIndexByte(target, '|'); i >= 0 {
			target = target[:i]
		}
	}
	conn, err := dialAdmin(na.Network, target, adminDialTimeout)
	switch {
	case err == nil:
		conn.Close()
		return "", nil
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", nil
	case na.IsUnixNetwork() && errors.Is(err, fs.ErrNotExist):
		return "no socket at " + target, nil
	}
	return "", fmt.Errorf("could not reach the Caddy admin endpoint at %s: %v. Nothing was done: the command uses a store directly only when nothing listens at the admin address (connection refused). "+
		"Check --address, or the admin address in --config; or give --store to work on a store directly", addr, err)
}

// storeSource is the store the CLI uses when no instance runs.
type storeSource struct {
	name  string // what openStore takes: a SQLite path or a PostgreSQL DSN
	shown string // what stderr shows: the path, or the DSN without its secrets
	from  string // where it comes from
}

// configStore returns the store that the postscale handlers of a config
// in Caddy's JSON use (configFile names the config in messages), or the
// default store when there is no config. A config whose handlers use
// several stores, or none, is an error: the CLI does not guess.
func configStore(cfg []byte, configFile string) (storeSource, error) {
	if cfg == nil {
		path := DefaultSQLitePath()
		return storeSource{name: path, shown: path, from: "the default store; --config or --store names another"}, nil
	}
	stores, err := configStores(cfg)
	if err != nil {
		return storeSource{}, fmt.Errorf("the store of --config %s cannot be read: %v", configFile, err)
	}
	switch len(stores) {
	case 0:
		return storeSource{}, fmt.Errorf("the config %s has no postscale handler, so it names no store; give --store, or --config with the gateway's config", configFile)
	case 1:
		stores[0].from = "the store of " + configFile
		return stores[0], nil
	}
	shown := make([]string, len(stores))
	for i, st := range stores {
		shown[i] = st.shown
	}
	return storeSource{}, fmt.Errorf("the config %s uses %d stores (%s); name the one to use with --store", configFile, len(stores), strings.Join(shown, ", "))
}

// configStores returns the distinct stores of the postscale handlers of a
// config in Caddy's JSON, wherever the handlers are, as the handlers open
// them: a SQLite path made absolute (the default one when a handler names
// none), a PostgreSQL DSN with its placeholders ({env.…}) replaced.
func configStores(cfg []byte) ([]storeSource, error) {
	handlers, err := postscaleHandlers(cfg)
	if err != nil {
		return nil, err
	}
	var stores []storeSource
	seen := map[string]bool{}
	for _, h := range handlers {
		st, err := handlerStore(h["store"])
		if err != nil {
			return nil, err
		}
		if !seen[st.name] {
			seen[st.name] = true
			stores = append(stores, st)
		}
	}
	return stores, nil
}

// postscaleHandlers returns the postscale handlers of a config in Caddy's
// JSON, wherever they are (in routes, subroutes, error routes).
func postscaleHandlers(cfg []byte) ([]map[string]any, error) {
	var doc any
	if err := json.Unmarshal(cfg, &doc); err != nil {
		return nil, err
	}
	var handlers []map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "postscale" {
				handlers = append(handlers, v)
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)
	return handlers, nil
}

// handlerStore reads the "store" of one postscale handler (nil: none).
func handlerStore(raw any) (storeSource, error) {
	m, _ := raw.(map[string]any)
	backend, _ := m["backend"].(string)
	switch backend {
	case "", "sqlite":
		path, _ := m["path"].(string)
		if path == "" {
			path = DefaultSQLitePath()
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return storeSource{}, err
		}
		return storeSource{name: abs, shown: abs}, nil
	case "postgres":
		dsn, _ := m["dsn"].(string)
		dsn, err := caddy.NewReplacer().ReplaceOrErr(dsn, true, false)
		if err != nil {
			return storeSource{}, fmt.Errorf("the postgres store's dsn: %v", err)
		}
		shown := "a PostgreSQL store"
		if pc, err := postgresPoolConfig(dsn, 0); err == nil {
			shown = postgresIdentity(pc.ConnConfig)
		}
		return storeSource{name: dsn, shown: shown}, nil
	}
	return storeSource{}, fmt.Errorf("the CLI cannot open a store of backend %q; run the command through the running instance", backend)
}

// directManager is the storeManager of the CLI straight on a store.
type directManager struct {
	storeManager
	// unchecked says why the plans are not known (when plans is nil).
	unchecked string
}

// configPlanQuotas returns the quotas of the plans of the postscale
// handlers in a config in Caddy's JSON (one handler's, if two differ).
func configPlanQuotas(cfg []byte) (map[string]Quota, error) {
	handlers, err := postscaleHandlers(cfg)
	if err != nil {
		return nil, err
	}
	quotas := map[string]Quota{}
	for _, h := range handlers {
		b, _ := json.Marshal(h["plans"])
		var plans map[string]Plan
		if err := json.Unmarshal(b, &plans); err != nil {
			return nil, err
		}
		for name, p := range plans {
			if _, seen := quotas[name]; !seen && p.Quota != nil {
				quotas[name] = *p.Quota
			}
		}
	}
	return quotas, nil
}

// configPlans returns the plans an account may be on under a config in
// Caddy's JSON: those of planNames with the plans of every postscale
// handler in it, wherever it is (in routes, subroutes, error routes). It
// returns nil for a config without a postscale handler.
func configPlans(cfg []byte) ([]string, error) {
	handlers, err := postscaleHandlers(cfg)
	if err != nil || len(handlers) == 0 {
		return nil, err
	}
	defined := map[string]bool{}
	for _, h := range handlers {
		if plans, ok := h["plans"].(map[string]any); ok {
			for name := range plans {
				defined[name] = true
			}
		}
	}
	return planNames(defined), nil
}

// refuseKeys refuses an API key among a command's arguments or flag
// values, showing its redacted form only, before anything is sent.
func refuseKeys(cmd *cobra.Command, args []string) error {
	what := "an id"
	switch cmd.Parent().Name() {
	case "key":
		what = "a key id (key_…)"
	case "account":
		what = "an account id"
	}
	refuse := func(where, v string) error {
		if start, end := nextKey(v, 0); start >= 0 {
			return fmt.Errorf("%s holds an API key (%s), not %s; nothing was sent. To revoke a key by the key itself, run: caddy postscale key revoke --key - and give the key on stdin",
				where, Redact(v[start:end]), what)
		}
		return nil
	}
	for _, a := range args {
		if err := refuse("the argument", a); err != nil {
			return err
		}
	}
	var err error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if err == nil {
			what = "a value of --" + f.Name
			err = refuse("--"+f.Name, f.Value.String())
		}
	})
	return err
}

// openStore opens a store outside of a Caddy config: a PostgreSQL store
// for a postgres:// or postgresql:// URL or keyword/value pairs
// ("host=… dbname=…"), else the SQLite file at that path. For a command
// that only reads, a SQLite store is opened read-only, and a missing one
// is ErrNoStore; for one that writes, a missing SQLite store is created,
// and created is its path.
func openStore(ctx context.Context, name string, acc access) (s interface {
	Store
	Close() error
}, created string, err error) {
	if isPostgresDSN(name) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := OpenPostgresStore(ctx, name)
		return s, "", err
	}
	path, err := filepath.Abs(name)
	if err != nil {
		return nil, "", fmt.Errorf("store path %q: %w", name, err)
	}
	if acc == readsOnly {
		s, err := OpenSQLiteStoreReadOnly(path)
		return s, "", err
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		created = path
	}
	s, err = OpenSQLiteStore(path)
	if err != nil {
		return nil, "", err
	}
	return s, created, nil
}

// postgresKeyword matches the start of a keyword/value DSN, "host=…".
var postgresKeyword = regexp.MustCompile(`^\s*[a-z_]+\s*=`)

// isPostgresDSN reports whether --store names a PostgreSQL database rather
// than a SQLite file. A keyword/value DSN taken for a path would create a
// file named after it, password and all.
func isPostgresDSN(name string) bool {
	return strings.HasPrefix(name, "postgres://") || strings.HasPrefix(name, "postgresql://") ||
		postgresKeyword.MatchString(name)
}

// adminClient is a Manager that calls a running instance's admin API.
type adminClient struct{ addr string }

func (c adminClient) call(method, uri string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	resp, err := caddycmd.AdminAPIRequest(c.addr, method, uri, nil, body)
	if err != nil {
		return adminError(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("reading the admin API's answer: %v", err)
	}
	return nil
}

// adminAnswer is how caddycmd.AdminAPIRequest reports an error status:
// the status, then the body as it came.
var adminAnswer = regexp.MustCompile(`(?s)^caddy responded with error: HTTP (\d{3}): (.*)$`)

// adminError turns the error of an admin API call into the message a
// person should read: the instance's own message, out of the JSON error
// body ({"error": "…"}) that caddycmd quotes whole. An answer that is not
// such a body is shown as it came, with its status.
func adminError(err error) error {
	m := adminAnswer.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	var doc struct {
		Error string `json:"error"`
	}
	if json.Unmarshal([]byte(m[2]), &doc) != nil || doc.Error == "" {
		return fmt.Errorf("the admin endpoint answered HTTP %s: %s", m[1], strings.TrimSpace(m[2]))
	}
	return errors.New(doc.Error)
}

// adminCall calls the admin API and decodes its answer as a T.
func adminCall[T any](c adminClient, method, uri string, in any) (T, error) {
	var out T
	err := c.call(method, uri, in, &out)
	return out, err
}

func (c adminClient) CreateAccount(_ context.Context, req AccountRequest) (Account, error) {
	return adminCall[Account](c, http.MethodPost, adminPrefix+"accounts", req)
}

func (c adminClient) GetAccount(_ context.Context, id string) (Account, error) {
	return adminCall[Account](c, http.MethodGet, adminPrefix+"accounts/"+url.PathEscape(id), nil)
}

func (c adminClient) UpdateAccount(_ context.Context, id string, req AccountUpdate) (Account, error) {
	return adminCall[Account](c, http.MethodPatch, adminPrefix+"accounts/"+url.PathEscape(id), req)
}

func (c adminClient) AccountUsage(_ context.Context, id string) (AccountUsage, error) {
	return adminCall[AccountUsage](c, http.MethodGet, adminPrefix+"accounts/"+url.PathEscape(id)+"/usage", nil)
}

func (c adminClient) RollKey(_ context.Context, id string, req RollRequest) (CreatedKey, error) {
	return adminCall[CreatedKey](c, http.MethodPost, adminPrefix+"keys/"+url.PathEscape(id)+"/roll", req)
}

func (c adminClient) ImportKeys(_ context.Context, req ImportRequest) (ImportResult, error) {
	return adminCall[ImportResult](c, http.MethodPost, adminPrefix+"keys/import", req)
}

func (c adminClient) CreateKey(_ context.Context, req KeyRequest) (CreatedKey, error) {
	return adminCall[CreatedKey](c, http.MethodPost, adminPrefix+"keys", req)
}

func (c adminClient) ListKeys(_ context.Context, account string) ([]KeyRecord, error) {
	return adminCall[[]KeyRecord](c, http.MethodGet, adminPrefix+"keys?account="+url.QueryEscape(account), nil)
}

func (c adminClient) GetKey(_ context.Context, id string) (KeyRecord, error) {
	return adminCall[KeyRecord](c, http.MethodGet, adminPrefix+"keys/"+url.PathEscape(id), nil)
}

func (c adminClient) RevokeKey(_ context.Context, id string) (KeyRecord, error) {
	return adminCall[KeyRecord](c, http.MethodDelete, adminPrefix+"keys/"+url.PathEscape(id), nil)
}

// RevokeByKey sends the key in the body, never in the URL.
func (c adminClient) RevokeByKey(_ context.Context, key string) (KeyRecord, error) {
	return adminCall[KeyRecord](c, http.MethodPost, adminPrefix+"keys/revoke", RevokeRequest{Key: key})
}

// Interface guards.
var (
	_ Manager = adminClient{}
	_ Manager = storeManager{}
	_ Manager = directManager{}
)
