package main

import (
	"context"

	"github.com/m2mauth/m2mauth"
)

// teeAuditor sends every audit event to the JSON log and, with a
// database, to its audit table. It reports the table's health, so that
// -require-audit can stop issuing tokens while the table cannot record
// them.
type teeAuditor struct {
	log   m2mauth.Auditor
	table m2mauth.Auditor // nil without a database
}

var _ m2mauth.AuditHealthChecker = teeAuditor{}

// Audit records e in the log, then in the table.
func (a teeAuditor) Audit(ctx context.Context, e m2mauth.AuditEvent) {
	a.log.Audit(ctx, e)
	if a.table != nil {
		a.table.Audit(ctx, e)
	}
}

// AuditHealth returns the table auditor's health when it can tell it, and
// nil otherwise: the JSON log on stderr is always written.
func (a teeAuditor) AuditHealth() error {
	if hc, ok := a.table.(m2mauth.AuditHealthChecker); ok {
		return hc.AuditHealth()
	}
	return nil
}
