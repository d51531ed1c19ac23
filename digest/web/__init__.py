"""The web app served by `digest serve`: preview studio, unsubscribe pages, webhooks, push API."""
