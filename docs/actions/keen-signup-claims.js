/**
 * Auth0 post-login Action for flask-keen-signup.
 *
 * Adds two namespaced claims to the ID token, so the Flask app learns them without calling
 * the Management API:
 *
 *   <namespace>created_at  the user's creation time (ISO-8601), for KEEN_SIGNUP_SINCE:
 *                          set KEEN_SIGNUP_CREATED_AT_CLAIM to this claim's name;
 *   <namespace>signedUp    true when the old Rule marked the user (app_metadata.signedUp),
 *                          for KEEN_SIGNUP_MARKER_CLAIM.
 *
 * Deploy it in Actions > Library > Build Custom, then add it to the Login flow.
 * Change NAMESPACE to a URL of your own (Auth0 reserves its own domains).
 */
const NAMESPACE = "https://example.com/";

exports.onExecutePostLogin = async (event, api) => {
  if (event.user.created_at) {
    api.idToken.setCustomClaim(`${NAMESPACE}created_at`, event.user.created_at);
  }
  const metadata = event.user.app_metadata || {};
  if (metadata.signedUp === true) {
    api.idToken.setCustomClaim(`${NAMESPACE}signedUp`, true);
  }
};
