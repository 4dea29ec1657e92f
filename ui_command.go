package postscale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/spf13/cobra"
)

// uiCommand is `caddy postscale ui`: it serves the operators' page on a
// local address, passing the page's requests on to the admin endpoint.
//
// Why: Caddy's admin endpoint refuses a browser request that carries
// Sec-Fetch-Mode but neither Origin nor Referer, which is what a typed or
// bookmarked URL sends, so /postscale/ui/ cannot be opened by hand. This
// command's own server stands between the browser and the endpoint and
// keeps the endpoint's protections itself: it answers only on loopback,
// only to its own Host (against DNS rebinding), only for /postscale/
// paths, and refuses what a browser marks as coming from another site. It
// refuses to serve an admin endpoint on a socket, which is reachable by
// fewer users than a loopback port.
func uiCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ui [--listen 127.0.0.1:0]",
		Short: "Serves the operators' API keys page on a local address, through the running instance's admin endpoint",
		Long: `Serves the operators' API keys page (/postscale/ui/ of Caddy's admin
endpoint) on a local address that a browser can open, and prints that
address. Every request of the page goes on to the admin endpoint found as
for the other commands (--address, --config, or localhost:2019). Stop it
with Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SilenceUsage = true
			listen, _ := cmd.Flags().GetString("listen")
			cfg, err := readConfigFlag(cmd)
			if err != nil {
				return err
			}
			admin, err := adminAddress(cmd, cfg)
			if err != nil {
				return err
			}
			notRunning, err := probeAdmin(admin)
			if err != nil {
				return err
			}
			if notRunning != "" {
				return fmt.Errorf("no Caddy admin endpoint at %s (%s): start the gateway first", admin, notRunning)
			}
			ln, err := listenLoopback(listen)
			if err != nil {
				return err
			}
			p, err := newUIProxy(admin, ln.Addr().String())
			if err != nil {
				ln.Close()
				return err
			}
			srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
			fmt.Fprintf(cmd.ErrOrStderr(), "Serving the operators' page of the admin endpoint at %s; stop with Ctrl-C.\n", admin)
			fmt.Fprintf(cmd.OutOrStdout(), "http://%s/postscale/ui/\n", ln.Addr())
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() {
				<-ctx.Done()
				shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_ = srv.Shutdown(shutdown)
			}()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().String("listen", "127.0.0.1:0", "Loopback address to serve the page on (port 0: any free port)")
	return cmd
}

// listenLoopback listens on addr, which must be a loopback address.
func listenLoopback(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %v", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("--listen %q: the page is served on a loopback address only (127.0.0.1, ::1 or localhost), as the admin endpoint is", addr)
	}
	return net.Listen("tcp", addr)
}

// uiProxy passes the page's requests on to the admin endpoint.
type uiProxy struct {
	self   string // the host:port the browser uses, checked against Host
	origin string // the admin endpoint's origin, sent as Origin
	base   string // URL prefix of the admin endpoint
	client *http.Client
}

func newUIProxy(admin, self string) (*uiProxy, error) {
	na, err := caddy.ParseNetworkAddress(admin)
	if err != nil || na.PortRangeSize() > 1 {
		return nil, fmt.Errorf("the admin address %q is not one address", admin)
	}
	if na.IsUnixNetwork() || na.IsFdNetwork() {
		// A socket limits the admin API to the users its file lets in;
		// a TCP port on loopback would open it to every local user.
		return nil, fmt.Errorf("the admin endpoint %s is a socket, which only its file's users can reach; serving its page on a TCP port would let every local user use it. Give the gateway a loopback admin address (admin localhost:2019) to use this command", admin)
	}
	target := na.JoinHostPort(0)
	p := &uiProxy{self: self, origin: "http://" + target}
	p.base = p.origin
	p.client = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(context.Context, string, string) (net.Conn, error) {
				return dialAdmin(na.Network, target, adminDialTimeout)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return p, nil
}

// uiForwardedHeaders are the request headers the page's calls need.
var uiForwardedHeaders = []string{"Accept", "Content-Type", "X-Postscale-Csrf", "If-None-Match"}

func (p *uiProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Host != p.self:
		http.Error(w, "wrong Host: open the address this command printed", http.StatusForbidden)
		return
	case r.URL.Path == "/":
		http.Redirect(w, r, "/postscale/ui/", http.StatusFound)
		return
	case !strings.HasPrefix(r.URL.Path, adminPrefix):
		http.NotFound(w, r)
		return
	}
	// What the admin endpoint would refuse from a browser on another
	// site, this server refuses too: it sends the endpoint's own origin.
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		http.Error(w, "cross-site request refused", http.StatusForbidden)
		return
	}
	if o := r.Header.Get("Origin"); o != "" && o != "http://"+p.self {
		http.Error(w, "cross-origin request refused", http.StatusForbidden)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Header.Get("X-Postscale-Csrf") != "1" {
		http.Error(w, "a change needs the page's X-Postscale-CSRF header", http.StatusForbidden)
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.base+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for _, h := range uiForwardedHeaders {
		if v := r.Header.Values(h); len(v) > 0 {
			req.Header[h] = v
		}
	}
	req.Header.Set("Origin", p.origin)
	resp, err := p.client.Do(req)
	if err != nil {
		http.Error(w, "the admin endpoint did not answer: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}
