package main

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/m2mauth/m2mauth"
)

// healthAuditor is a table auditor that can tell whether it records.
type healthAuditor struct {
	events []m2mauth.AuditEvent
	health error
}

func (a *healthAuditor) Audit(_ context.Context, e m2mauth.AuditEvent) {
	a.events = append(a.events, e)
}
func (a *healthAuditor) AuditHealth() error { return a.health }

func TestTeeAuditor(t *testing.T) {
	var logged []m2mauth.AuditEvent
	log := m2mauth.AuditorFunc(func(_ context.Context, e m2mauth.AuditEvent) { logged = append(logged, e) })
	e := m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued, ClientID: "c"}

	t.Run("events go to both", func(t *testing.T) {
		logged = nil
		table := &healthAuditor{}
		teeAuditor{log: log, table: table}.Audit(t.Context(), e)
		assert.Equal(t, []m2mauth.AuditEvent{e}, logged)
		assert.Equal(t, []m2mauth.AuditEvent{e}, table.events)
	})
	t.Run("the table's health is reported", func(t *testing.T) {
		down := errors.New("audit table unavailable")
		table := &healthAuditor{health: down}
		assert.ErrorIs(t, teeAuditor{log: log, table: table}.AuditHealth(), down)
		table.health = nil
		assert.NoError(t, teeAuditor{log: log, table: table}.AuditHealth())
	})
	t.Run("without a health check or a table, the log is enough", func(t *testing.T) {
		logged = nil
		a := teeAuditor{log: log}
		a.Audit(t.Context(), e)
		assert.Len(t, logged, 1)
		assert.NoError(t, a.AuditHealth())
		assert.NoError(t, teeAuditor{log: log, table: log}.AuditHealth())
	})
}
