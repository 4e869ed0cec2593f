"""The acceptance run's custom-resource handler (a Lambda function; boto3 only)."""
