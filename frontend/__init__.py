"""The browser console: server-rendered pages that call the services and selectors."""
