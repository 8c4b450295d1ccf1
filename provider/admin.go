package provider

import (
	"context"
	"fmt"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// InitTokenConfig describes a token to initialise.
type InitTokenConfig struct {
	Module string
	// Slot to initialise; nil picks the first slot whose token is not
	// initialised yet (SoftHSM always offers one).
	Slot    *uint
	Label   string
	SOPIN   PINSource
	UserPIN PINSource
}

// InitToken initialises a token: sets its label and SO PIN and then the user
// PIN (PKCS#11 v2.40 §5.5, C_InitToken and C_InitPIN). Everything on the token
// is erased. It returns the token as the module now lists it.
//
// This is for provisioning test and development tokens (SoftHSM); real HSMs
// are usually initialised with their vendor's tools.
func InitToken(ctx context.Context, cfg InitTokenConfig) (TokenInfo, error) {
	if cfg.Label == "" || len(cfg.Label) > 32 {
		return TokenInfo{}, fmt.Errorf("%w: token label must be 1 to 32 bytes", ErrInvalidInput)
	}
	if cfg.SOPIN == nil || cfg.UserPIN == nil {
		return TokenInfo{}, fmt.Errorf("%w: token init needs an so pin and a user pin", ErrConfig)
	}
	mod, err := p11.Load(cfg.Module)
	if err != nil {
		return TokenInfo{}, mapErr(err)
	}
	defer mod.Release()
	var slot uint
	if cfg.Slot != nil {
		slot = *cfg.Slot
	} else {
		free, err := mod.FreeSlots()
		if err != nil {
			return TokenInfo{}, mapErr(err)
		}
		if len(free) == 0 {
			return TokenInfo{}, fmt.Errorf("%w: no slot with an uninitialised token", ErrNotFound)
		}
		slot = free[0]
	}
	so, err := cfg.SOPIN.ReadPIN(ctx, TokenInfo{Slot: slot})
	if err != nil {
		return TokenInfo{}, err
	}
	defer clear(so)
	user, err := cfg.UserPIN.ReadPIN(ctx, TokenInfo{Slot: slot})
	if err != nil {
		return TokenInfo{}, err
	}
	defer clear(user)
	if err := mod.InitToken(slot, so, user, cfg.Label); err != nil {
		return TokenInfo{}, mapErr(err)
	}
	all, err := tokens(mod)
	if err != nil {
		return TokenInfo{}, err
	}
	for _, t := range all {
		if t.Slot == slot {
			return t, nil
		}
	}
	return TokenInfo{Slot: slot, Label: cfg.Label}, nil
}
