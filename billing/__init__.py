"""Billing: price book, usage ledger, budgets and credits, invoices, payment providers."""
