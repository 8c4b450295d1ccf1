package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider"
)

// usageError is a command line that cannot be run as given: exit status 2.
type usageError struct {
	msg  string
	hint string // next step; empty: "run 'hsmkeys help'"
}

func (e *usageError) Error() string { return e.msg }

// usagef is a usage error for command path, pointing at its help.
func usagef(path string, format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...), hint: fmt.Sprintf("run 'hsmkeys %s --help' for usage and examples", path)}
}

// errHelpShown: help was asked for and printed; exit 0.
var errHelpShown = errors.New("help shown")

// hinted is an error with a next step for the user.
type hinted struct {
	err  error
	hint string
}

func (e *hinted) Error() string { return e.err.Error() }
func (e *hinted) Unwrap() error { return e.err }

func withHint(err error, format string, a ...any) error {
	if err == nil {
		return nil
	}
	return &hinted{err: err, hint: fmt.Sprintf(format, a...)}
}

// fail prints err as "hsmkeys: error: ..." with a hint where one helps,
// writes the --json document (success or failure), and returns the exit
// status.
func (c *cli) fail(err error) int {
	c.endLine()
	if err == nil || errors.Is(err, errHelpShown) {
		if err == nil {
			c.emitJSON(nil, nil, exitOK)
		}
		return exitOK
	}
	if sig := c.sig.Load(); sig != 0 || errors.Is(err, context.Canceled) {
		code := exitFail
		if sig != 0 {
			code = 128 + int(sig) // 130 for SIGINT, as shells report it
		}
		msg := "interrupted; no partial output was left behind"
		fmt.Fprintln(c.stderr, "hsmkeys: error: "+msg)
		c.emitJSON(errors.New(msg), nil, code)
		return code
	}
	fmt.Fprintf(c.stderr, "hsmkeys: error: %v\n", err)
	code := exitFail
	var hs []string
	var ue *usageError
	if errors.As(err, &ue) {
		h := ue.hint
		if h == "" {
			h = "run 'hsmkeys help' for usage"
		}
		hs, code = []string{h}, exitUsage
	} else {
		hs = c.hints(err)
	}
	for _, h := range hs {
		fmt.Fprintf(c.stderr, "hsmkeys: hint: %s\n", h)
	}
	c.emitJSON(err, hs, code)
	return code
}

// hints are the next steps for err: one a command attached, else the
// provider's errors a user can act on.
func hints(err error) []string {
	var h *hinted
	if errors.As(err, &h) {
		return []string{h.hint}
	}
	var pe *provider.PINError
	var tnf *provider.TokenNotFoundError
	var ke *provider.KindError
	switch {
	case errors.As(err, &ke):
		return []string{kindHint(ke)}
	case errors.As(err, &pe):
		return []string{pinHint(pe)}
	case errors.As(err, &tnf):
		return tokenHints(tnf)
	case errors.Is(err, provider.ErrTokenBusy):
		return []string{busyHint}
	case errors.Is(err, provider.ErrPINSource):
		return []string{"give the PIN in a file (--pin-file, HSMKEYS_PIN_FILE; --so-pin-file, HSMKEYS_SO_PIN_FILE), in HSMKEYS_PIN / HSMKEYS_SO_PIN, or run on a terminal to be asked"}
	case errors.Is(err, provider.ErrSecretFile):
		return []string{"the file must be mode 0600 and hold 16 or 32 bytes, raw or as hex"}
	case errors.Is(err, provider.ErrContext):
		return []string{"give the same --context k=v pairs the message was made with ('hsmkeys key inspect FILE' shows them)"}
	case errors.Is(err, provider.ErrWrappedKeyInvalid), errors.Is(err, provider.ErrAuthentication), errors.Is(err, provider.ErrMalformed):
		return []string{"the file was changed, truncated or made for another key; nothing was written"}
	case errors.Is(err, provider.ErrUnsupported), errors.Is(err, provider.ErrPolicy):
		return []string{"run 'hsmkeys doctor' to see what this token can and cannot enforce"}
	case errors.Is(err, provider.ErrLoginHeld):
		return []string{"close other programs of this process using the token; kek commands log in as the Security Officer"}
	case strings.Contains(err.Error(), "C_Initialize: CKR_ARGUMENTS_BAD"):
		return []string{"this module needs initialisation arguments: give them with --init-args or HSMKEYS_INIT_ARGS (NSS softoken: --init-args \"configdir='sql:/path/to/db'\")"}
	case errors.Is(err, provider.ErrConfig) && strings.Contains(err.Error(), "initialised with other arguments"):
		return []string{"a module is initialised once per process: use the same --init-args everywhere in it"}
	case errors.Is(err, provider.ErrConfig) && strings.Contains(err.Error(), "module"):
		return []string{moduleChoiceHint(provider.RegisteredModules())}
	}
	return nil
}

// busyHint is for a token that failed calls which succeed when repeated.
const busyHint = "the token was found but kept failing while other processes used it (SoftHSM's file store is not safe for that, SoftHSMv2 #757); try again"

// kindHint names what the input is and the command that takes it.
func kindHint(e *provider.KindError) string {
	switch e.Kind {
	case "message":
		return "it is an encrypted message: 'hsmkeys decrypt -i FILE' opens it"
	case "key":
		return "it is an exported key: 'hsmkeys key inspect FILE' describes it, 'hsmkeys key rewrap' re-wraps it"
	}
	return "hsmkeys reads the messages of 'hsmkeys encrypt' and the keys of 'hsmkeys key new' (CMS authEnvelopedData); 'openssl cms -cmsout -print -inform DER -in FILE' shows what this is"
}

func pinHint(pe *provider.PINError) string {
	if pe.Locked {
		if pe.SO {
			return "the SO PIN is locked; re-initialise the token with its vendor's tools"
		}
		return "the user PIN is locked; the Security Officer must reset it"
	}
	if pe.SO {
		return "check HSMKEYS_SO_PIN or the file named by --so-pin-file / HSMKEYS_SO_PIN_FILE; the token counts wrong tries"
	}
	return "check HSMKEYS_PIN or the file named by --pin-file / HSMKEYS_PIN_FILE; the token counts wrong tries"
}

func tokenHints(e *provider.TokenNotFoundError) []string {
	var ready []provider.TokenInfo
	for _, t := range e.Tokens {
		if t.Initialized {
			ready = append(ready, t)
		}
	}
	if e.Seen {
		return []string{busyHint}
	}
	if len(ready) == 0 {
		if e.Tries > 1 {
			return []string{"no initialised token is there; if it exists, other processes may have been using it (SoftHSM's file store): try again; else initialise one (scripts/softhsm-setup.sh for SoftHSM); 'hsmkeys tokens' lists the slots"}
		}
		return []string{"initialise a token first (scripts/softhsm-setup.sh for SoftHSM); 'hsmkeys tokens' lists the slots"}
	}
	out := []string{"the module offers these tokens ('hsmkeys tokens' for details):"}
	for _, t := range ready {
		out = append(out, fmt.Sprintf("  --token %q   (serial %s, slot %d, model %s)", t.Label, t.Serial, t.Slot, t.Model))
	}
	return out
}

// kekNotFound names the KEK and points at kek list.
func kekNotFound(err error) error {
	if errors.Is(err, provider.ErrAmbiguous) {
		return withHint(err, "name one version: 'hsmkeys kek list' prints each version's URI, with its id")
	}
	if errors.Is(err, provider.ErrNotFound) {
		return withHint(err, "run 'hsmkeys kek list' to see the KEKs on this token, 'hsmkeys kek create --label NAME' to make one")
	}
	return err
}
