//! Delivery of events to webhook subscriptions (see below).
