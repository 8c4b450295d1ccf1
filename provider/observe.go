package provider

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// Metrics are hooks that count what an operator of an HSM-backed service
// watches: waits for a session, calls tried again, lost keys, logins
// restored. Each is optional (nil is not called); set the ones you count,
// for example into Prometheus counters and histograms. They run on the
// goroutine of the operation that caused them, so they must be quick, must
// not block and must not call the provider. None is given a secret.
type Metrics struct {
	// PoolWait: an operation found all Config.MaxSessions sessions in use
	// and waited d for one (until it got one or its context ended).
	// Operations that did not wait are not reported.
	PoolWait func(d time.Duration)
	// Retry: a token call failed and is being tried again. op is the
	// PKCS#11 function ("C_GetTokenInfo"), code its CKR_* value (see
	// TokenError). Transient failures of a busy token are tried again
	// with a short wait (ErrTokenBusy when they keep failing); an
	// operation whose session the token closed is tried once on another.
	// A token missing from the slot list at Open is op "C_GetSlotList",
	// code 0.
	Retry func(op string, code uint)
	// KeyLost: a session key was found lost (ErrKeyLost): the token
	// dropped its session. Called once per key.
	KeyLost func()
	// Relogin: the token had lost the login state (all sessions closed
	// under the provider, a logout elsewhere in the process) and the
	// provider logged in again with the PIN it kept.
	Relogin func()
}

// observer sends the provider's events to Config.Logger and
// Config.Metrics. Its zero value, and a nil *observer, report nothing and
// cost a nil check.
type observer struct {
	log *slog.Logger
	m   *Metrics
}

func newObserver(cfg Config) *observer {
	if cfg.Logger == nil && cfg.Metrics == nil {
		return nil
	}
	return &observer{log: cfg.Logger, m: cfg.Metrics}
}

// poolHooks are the pool's hooks for o: nil ones when o reports nothing.
func (o *observer) poolHooks() p11.Hooks {
	if o == nil {
		return p11.Hooks{}
	}
	var h p11.Hooks
	if o.log != nil {
		h.WaitBegin = func() {
			o.log.Debug("hsmkeys: every session is in use; waiting for one")
		}
	}
	if o.log != nil || o.m != nil && o.m.PoolWait != nil {
		h.WaitEnd = func(d time.Duration) {
			if o.m != nil && o.m.PoolWait != nil {
				o.m.PoolWait(d)
			}
			if o.log != nil {
				o.log.Debug("hsmkeys: waited for a session", "wait", d)
			}
		}
	}
	if o.log != nil || o.m != nil && o.m.Relogin != nil {
		h.Relogin = func() {
			if o.m != nil && o.m.Relogin != nil {
				o.m.Relogin()
			}
			if o.log != nil {
				o.log.Warn("hsmkeys: the token lost the login; logged in again")
			}
		}
	}
	return h
}

// retry reports that a call that failed with err is tried again (try is
// the number of the next try).
func (o *observer) retry(err error, try int) {
	if o == nil {
		return
	}
	op, code := "", uint(0)
	var te *TokenError
	var pe *p11.Error
	var tnf *TokenNotFoundError
	switch {
	case errors.As(err, &te):
		op, code = te.Op, te.Code
	case errors.As(err, &pe):
		op, code = pe.Op, pe.Code
	case errors.As(err, &tnf):
		op = "C_GetSlotList"
	}
	if o.m != nil && o.m.Retry != nil {
		o.m.Retry(op, code)
	}
	if o.log != nil {
		o.log.Debug("hsmkeys: token call failed; trying again", "op", op, "code", codeName(code), "try", try)
	}
}

// keyLost reports a session key found lost.
func (o *observer) keyLost(k *Key) {
	if o == nil {
		return
	}
	if o.m != nil && o.m.KeyLost != nil {
		o.m.KeyLost()
	}
	if o.log != nil {
		o.log.Warn("hsmkeys: session key lost with its token session", "key", k.String())
	}
}

// opened logs a provider that opened.
func (o *observer) opened(p *Provider, tries int) {
	if o == nil || o.log == nil {
		return
	}
	o.log.LogAttrs(context.Background(), slog.LevelInfo, "hsmkeys: token opened",
		slog.String("token", p.token.Label), slog.String("serial", p.token.Serial),
		slog.Uint64("slot", uint64(p.token.Slot)), slog.Int("max_sessions", p.cfg.MaxSessions),
		slog.String("export_policy", p.cfg.ExportPolicy.String()), slog.Int("tries", tries))
}

// closed logs a provider that closed.
func (o *observer) closed(p *Provider, keys int, err error) {
	if o == nil || o.log == nil {
		return
	}
	if err != nil {
		o.log.Warn("hsmkeys: provider closed with errors", "token", p.token.Label, "keys_destroyed", keys, "error", err)
		return
	}
	o.log.Info("hsmkeys: provider closed", "token", p.token.Label, "keys_destroyed", keys)
}
