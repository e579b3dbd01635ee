-- Tracking codes: where and how each partner's webhooks are delivered (CONTRACT section 4).
-- The column list is part of the external contract: extend it, never rename or drop.

CREATE TABLE tracking_codes (
    code              text PRIMARY KEY,
    endpoint_url      text NOT NULL,
    auth_method       text NOT NULL DEFAULT 'none',
    auth_params       jsonb NOT NULL DEFAULT '{}',
    extra_fields      jsonb NOT NULL DEFAULT '{}',
    signing_secret    text,
    call_on_finished  boolean NOT NULL DEFAULT false,
    active            boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT tracking_codes_code_not_empty
        CHECK (code <> ''),
    CONSTRAINT tracking_codes_endpoint_url_http
        CHECK (endpoint_url ~* '^https?://'),
    CONSTRAINT tracking_codes_auth_method_known
        CHECK (auth_method IN ('none', 'basic', 'bearer', 'header', 'query')),
    CONSTRAINT tracking_codes_auth_params_object
        CHECK (jsonb_typeof(auth_params) = 'object'),
    CONSTRAINT tracking_codes_extra_fields_object
        CHECK (jsonb_typeof(extra_fields) = 'object'),
    CONSTRAINT tracking_codes_extra_fields_no_data
        CHECK (NOT (extra_fields ? 'data')),
    CONSTRAINT tracking_codes_signing_secret_whsec
        CHECK (signing_secret IS NULL OR starts_with(signing_secret, 'whsec_'))
);

COMMENT ON TABLE tracking_codes IS
    'Partner webhook endpoints by tracking code (CONTRACT section 4); auth_params and '
    'signing_secret are credentials';

-- updated_at follows every change to a row, whoever makes it.
CREATE FUNCTION tracking_codes_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER tracking_codes_updated_at
    BEFORE UPDATE ON tracking_codes
    FOR EACH ROW
    EXECUTE FUNCTION tracking_codes_touch_updated_at();
