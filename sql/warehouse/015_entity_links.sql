-- bookaudit warehouse: every writer batch is linked to its bookings as it is chained. The writer
-- ends each batch with one audit.chain_links row naming the batch's row changes, under the
-- chain's lock (held to commit), so batches are linked one after another: a payment and its
-- invoice stored by two writers at once still find each other, whichever commits second.
-- Functions and tables: 003_entity_map.sql.

CREATE OR REPLACE FUNCTION audit.link_chained_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM audit.link_changes(NEW.change_ids);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS link_bookings ON audit.chain_links;
CREATE TRIGGER link_bookings AFTER INSERT ON audit.chain_links
    FOR EACH ROW EXECUTE FUNCTION audit.link_chained_changes();
