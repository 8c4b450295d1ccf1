package provider_test

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
)

// What went wrong on the token: the sentinel to branch on, and the
// PKCS#11 function and CKR_* code for the log.
func ExampleTokenError() {
	ctx := context.Background()
	p, err := provider.Open(ctx, provider.Config{
		URI: "pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so",
		PIN: provider.PINFile("/run/secrets/hsm-pin"),
	})
	var te *provider.TokenError
	switch {
	case errors.Is(err, provider.ErrTokenBusy):
		log.Fatal("the token is busy; try again later")
	case errors.As(err, &te):
		log.Fatalf("the token refused %s with %s (0x%X)", te.Op, te.Name(), te.Code)
	case err != nil:
		log.Fatal(err)
	}
	defer p.Close()
}

// Logs and metrics for an operator: a logger for the events, counters for
// waits, retries, lost keys and restored logins.
func ExampleMetrics() {
	var waits, retries, lost, relogins atomic.Int64
	var waited atomic.Int64 // nanoseconds
	p, err := provider.Open(context.Background(), provider.Config{
		URI:    "pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so",
		PIN:    provider.PINEnv("HSMKEYS_PIN"),
		Logger: slog.New(slog.NewJSONHandler(os.Stderr, nil)),
		Metrics: &provider.Metrics{
			PoolWait: func(d time.Duration) { waits.Add(1); waited.Add(int64(d)) },
			Retry:    func(op string, code uint) { retries.Add(1) },
			KeyLost:  func() { lost.Add(1) },
			Relogin:  func() { relogins.Add(1) },
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
}
