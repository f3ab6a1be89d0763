-- bookaudit source uninstall: the schema and everything in it (context triggers depend on it).
DROP SCHEMA IF EXISTS bookaudit CASCADE;
