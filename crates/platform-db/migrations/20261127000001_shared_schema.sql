-- The shared database: schemas `shared`, `arbor`, `kumori`, and the shared tables.
-- Every statement is idempotent (IF NOT EXISTS / OR REPLACE), so running this file
-- twice, or against a database created by the seed's scripts, changes nothing.
-- Product schemas beyond the seed's two come from the product catalogue at run time
-- (`Database::migrate` creates one per catalogue product).

CREATE SCHEMA IF NOT EXISTS shared;
CREATE SCHEMA IF NOT EXISTS arbor;
CREATE SCHEMA IF NOT EXISTS kumori;

-- Keeps `updated_at` current on every UPDATE that changes a row without setting
-- `updated_at` itself (the repositories set it from the injected clock).
CREATE OR REPLACE FUNCTION shared.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW IS DISTINCT FROM OLD AND NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

CREATE TABLE IF NOT EXISTS shared.users (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    clerk_id           text        NOT NULL,
    email              text        NOT NULL,
    stripe_customer_id text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_clerk_id_key UNIQUE (clerk_id),
    CONSTRAINT users_stripe_customer_id_key UNIQUE (stripe_customer_id),
    CONSTRAINT users_clerk_id_check CHECK (length(clerk_id) BETWEEN 1 AND 255),
    CONSTRAINT users_email_check CHECK (length(email) <= 320 AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    CONSTRAINT users_stripe_customer_id_check
        CHECK (stripe_customer_id IS NULL OR length(stripe_customer_id) BETWEEN 1 AND 255)
);
CREATE OR REPLACE TRIGGER users_touch_updated_at
    BEFORE UPDATE ON shared.users
    FOR EACH ROW EXECUTE FUNCTION shared.touch_updated_at();

-- Subscriptions keep their history: a tier change closes the current row
-- (is_current = false, ended_at set) and opens a new one. At most one row per
-- (user, product) is current. Tiers are validated against the product catalogue by
-- the application (the catalogue is configuration); here only their shape.
CREATE TABLE IF NOT EXISTS shared.subscriptions (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    seq        bigint      GENERATED ALWAYS AS IDENTITY,
    user_id    uuid        NOT NULL REFERENCES shared.users (id) ON DELETE CASCADE,
    product    text        NOT NULL,
    tier       text        NOT NULL,
    status     text        NOT NULL,
    is_current boolean     NOT NULL DEFAULT true,
    started_at timestamptz NOT NULL,
    expires_at timestamptz,
    ended_at   timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscriptions_seq_key UNIQUE (seq),
    CONSTRAINT subscriptions_product_check CHECK (product ~ '^[a-z][a-z0-9-]{0,31}$'),
    CONSTRAINT subscriptions_tier_check CHECK (tier ~ '^[a-z][a-z0-9-]{0,31}$'),
    CONSTRAINT subscriptions_status_check
        CHECK (status IN ('active', 'trialing', 'past_due', 'canceled', 'expired')),
    CONSTRAINT subscriptions_period_check CHECK (expires_at IS NULL OR expires_at >= started_at),
    CONSTRAINT subscriptions_ended_check CHECK (is_current OR ended_at IS NOT NULL)
);
CREATE UNIQUE INDEX IF NOT EXISTS subscriptions_one_current_idx
    ON shared.subscriptions (user_id, product) WHERE is_current;
CREATE INDEX IF NOT EXISTS subscriptions_user_idx ON shared.subscriptions (user_id, seq);
CREATE OR REPLACE TRIGGER subscriptions_touch_updated_at
    BEFORE UPDATE ON shared.subscriptions
    FOR EACH ROW EXECUTE FUNCTION shared.touch_updated_at();

-- The usage ledger. `idempotency_key` is unique, so a retried recording never
-- counts twice.
CREATE TABLE IF NOT EXISTS shared.usage_metrics (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES shared.users (id) ON DELETE CASCADE,
    product         text        NOT NULL,
    metric          text        NOT NULL,
    quantity        bigint      NOT NULL,
    idempotency_key text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_metrics_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT usage_metrics_product_check CHECK (product ~ '^[a-z][a-z0-9-]{0,31}$'),
    CONSTRAINT usage_metrics_metric_check CHECK (metric ~ '^[a-z0-9][a-z0-9_.:-]{0,63}$'),
    CONSTRAINT usage_metrics_quantity_check CHECK (quantity >= 0),
    CONSTRAINT usage_metrics_idempotency_key_check CHECK (length(idempotency_key) BETWEEN 1 AND 255)
);
-- Sums per (user, product, metric) over a period, and quota checks.
CREATE INDEX IF NOT EXISTS usage_metrics_user_metric_time_idx
    ON shared.usage_metrics (user_id, product, metric, recorded_at);
-- Daily/monthly active users per product.
CREATE INDEX IF NOT EXISTS usage_metrics_product_time_idx
    ON shared.usage_metrics (product, recorded_at) INCLUDE (user_id);

-- Webhook de-duplication: one row per (provider, event id) ever processed.
CREATE TABLE IF NOT EXISTS shared.processed_events (
    provider     text        NOT NULL,
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT processed_events_pkey PRIMARY KEY (provider, event_id),
    CONSTRAINT processed_events_provider_check CHECK (provider ~ '^[a-z][a-z0-9_-]{0,31}$'),
    CONSTRAINT processed_events_event_id_check CHECK (length(event_id) BETWEEN 1 AND 255)
);
