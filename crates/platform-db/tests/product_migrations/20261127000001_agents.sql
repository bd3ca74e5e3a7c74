-- A product's own table, created unqualified: it lands in the product's schema.
CREATE TABLE IF NOT EXISTS agents (
    id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES shared.users (id) ON DELETE CASCADE,
    name    text NOT NULL
);
