package m2mauth

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
)

// The forwarding headers a trusted proxy may write; see
// [TokenHandlerConfig.ForwardedHeader].
const (
	// HeaderXForwardedFor is the de facto X-Forwarded-For header, with
	// X-Forwarded-Proto for the scheme (nginx, HAProxy, Envoy, AWS ALB).
	HeaderXForwardedFor = "X-Forwarded-For"
	// HeaderForwarded is the Forwarded header of RFC 7239, whose for= and
	// proto= parameters name the client's address and scheme.
	HeaderForwarded = "Forwarded"
)

// addrPolicy finds the client's address and whether its request came over
// TLS. It is shared by every endpoint and the validator, so all of them
// see one client the same way. With a logger, it warns once about
// forwarding headers it ignores.
type addrPolicy struct {
	trusted []netip.Prefix
	header  string // HeaderXForwardedFor or HeaderForwarded, when trusted is set
	v6bits  int
	logger  *slog.Logger
	warned  atomic.Bool
}

// newAddrPolicy checks the trusted proxy settings of a configuration.
func newAddrPolicy(trusted []netip.Prefix, header string, v6bits int, logger *slog.Logger) (*addrPolicy, error) {
	for _, p := range trusted {
		if !p.IsValid() {
			return nil, fmt.Errorf("m2mauth: invalid trusted proxy network %v", p)
		}
	}
	switch {
	case header == "" && len(trusted) > 0:
		return nil, fmt.Errorf("m2mauth: TrustedProxies is set: ForwardedHeader must name the one header the proxies write (%q or %q)", HeaderXForwardedFor, HeaderForwarded)
	case header == "":
	case strings.EqualFold(header, HeaderXForwardedFor):
		header = HeaderXForwardedFor
	case strings.EqualFold(header, HeaderForwarded):
		header = HeaderForwarded
	default:
		return nil, fmt.Errorf("m2mauth: ForwardedHeader %q is neither %q nor %q", header, HeaderXForwardedFor, HeaderForwarded)
	}
	switch {
	case v6bits == 0:
		v6bits = 64
	case v6bits < 1 || v6bits > 128:
		return nil, fmt.Errorf("m2mauth: IPv6Prefix %d outside [1, 128]", v6bits)
	}
	for _, p := range trusted {
		if p.Bits() == 0 && logger != nil {
			logger.Warn("m2mauth: TrustedProxies holds "+p.String()+", which trusts every address as a TLS-terminating proxy: "+
				"any client can claim HTTPS with a forwarding header and choose the address that rate limiting and auditing see; name only your proxies' networks",
				"network", p.String())
		}
	}
	return &addrPolicy{trusted: trusted, header: header, v6bits: v6bits, logger: logger}, nil
}

// peer is what the policy learnt of one request's client.
type peer struct {
	addr netip.Addr // the client's address; invalid if unknown
	// secure reports that the client's request reached us over TLS:
	// on this connection, or on the trusted proxy's (by its header).
	secure bool
	// local reports a loopback peer that is not a trusted proxy: a
	// developer's own machine.
	local bool
}

// resolve finds the client of r: the peer of the connection or, when the
// peer is one of the trusted proxies, the nearest address in the
// configured forwarding header that is not a trusted proxy. Forwarding
// headers from anyone else, and every header but the configured one, are
// ignored: they are trivially spoofed.
func (p *addrPolicy) resolve(r *http.Request) peer {
	addr := peerAddr(r)
	if !addr.IsValid() {
		return peer{secure: r.TLS != nil}
	}
	if len(p.trusted) == 0 || !inPrefixes(addr, p.trusted) {
		if p.logger != nil && len(p.trusted) == 0 && !p.warned.Load() && (addr.IsPrivate() || addr.IsLoopback()) {
			p.warnForwarding(r, addr)
		}
		return peer{addr: addr, secure: r.TLS != nil, local: addr.IsLoopback()}
	}
	hops, protos := p.hops(r.Header)
	at := -1 // the hop that named the client; -1: the peer itself
	for i := len(hops) - 1; i >= 0; i-- {
		hop, ok := parseHop(hops[i])
		if !ok {
			break
		}
		addr, at = hop, i
		if !inPrefixes(hop, p.trusted) {
			break
		}
	}
	proto := ""
	switch {
	case p.header == HeaderForwarded && at >= 0:
		proto = protos[at]
	case p.header == HeaderForwarded && len(protos) > 0:
		proto = protos[len(protos)-1]
	case p.header == HeaderXForwardedFor:
		// The nearest proxy's word, which it must set, not append to.
		if v := r.Header.Values("X-Forwarded-Proto"); len(v) > 0 {
			last := v[len(v)-1]
			if i := strings.LastIndexByte(last, ','); i >= 0 {
				last = last[i+1:]
			}
			proto = strings.TrimSpace(last)
		}
	}
	return peer{addr: addr, secure: strings.EqualFold(proto, "https")}
}

// warnForwarding logs, once, that a request from a private address carries
// forwarding headers that are being ignored.
func (p *addrPolicy) warnForwarding(r *http.Request, addr netip.Addr) {
	h := r.Header
	if h.Get("X-Forwarded-For") == "" && h.Get("Forwarded") == "" && h.Get("X-Real-Ip") == "" {
		return
	}
	if p.warned.Swap(true) {
		return
	}
	p.logger.LogAttrs(r.Context(), slog.LevelWarn,
		"m2mauth: a request from a private address carries forwarding headers, but TrustedProxies is empty: "+
			"if a reverse proxy is in front, every client behind it shares the proxy's address for rate limiting; "+
			"set TrustedProxies and ForwardedHeader",
		slog.String("peer", addr.String()))
}

// peerAddr is the address of the connection's peer, without a zone.
func peerAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap().WithZone("")
}

func inPrefixes(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// hops lists the client addresses recorded by proxies in the configured
// header, nearest last; for Forwarded, protos holds each element's proto=.
func (p *addrPolicy) hops(h http.Header) (hops, protos []string) {
	if p.header == HeaderForwarded {
		for _, line := range h.Values("Forwarded") {
			for _, elem := range strings.Split(line, ",") {
				hop, proto := "", "" // an element without for= is an unknown hop
				for _, pair := range strings.Split(elem, ";") {
					k, v, _ := strings.Cut(strings.TrimSpace(pair), "=")
					switch {
					case strings.EqualFold(k, "for"):
						hop = strings.Trim(v, `"`)
					case strings.EqualFold(k, "proto"):
						proto = strings.Trim(v, `"`)
					}
				}
				hops, protos = append(hops, hop), append(protos, proto)
			}
		}
		return hops, protos
	}
	for _, line := range h.Values("X-Forwarded-For") {
		for _, hop := range strings.Split(line, ",") {
			hops = append(hops, strings.TrimSpace(hop))
		}
	}
	return hops, nil
}

// parseHop reads one forwarded address: "192.0.2.1", "192.0.2.1:80",
// "2001:db8::1", "[2001:db8::1]" or "[2001:db8::1]:443". Zones are
// refused: a proxy never forwards one.
func parseHop(s string) (netip.Addr, bool) {
	if len(s) > 64 {
		return netip.Addr{}, false
	}
	var a netip.Addr
	if ap, err := netip.ParseAddrPort(s); err == nil {
		a = ap.Addr()
	} else if a, err = netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err != nil {
		return netip.Addr{}, false
	}
	if a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// key is the limiter key of address a, whose text form is text: IPv4
// addresses whole, IPv6 addresses cut to their first v6bits bits.
func (p *addrPolicy) key(a netip.Addr, text string) string {
	switch {
	case !a.IsValid():
		return "unknown"
	case a.Is4():
		return text
	}
	pf, err := a.Prefix(p.v6bits)
	if err != nil {
		return text
	}
	return pf.String()
}

// isLoopbackHost reports whether host names this machine: "localhost" or
// a loopback address.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}
