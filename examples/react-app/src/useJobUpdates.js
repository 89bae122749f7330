// The React hook of seed 001 ("WebSocket API Documentation"), as written
// there. One change: the gateway URL comes from VITE_LEADGATE_URL (default
// http://localhost:3000) instead of being fixed. The token and the job id
// are the hook's arguments, as in the seed; App.jsx takes them from the
// page's query string or its form.
import { useEffect, useState } from 'react';
import io from 'socket.io-client';

const LEADGATE_URL = import.meta.env.VITE_LEADGATE_URL || 'http://localhost:3000';

export function useJobUpdates(jobId, token) {
  const [jobStatus, setJobStatus] = useState(null);
  const [updates, setUpdates] = useState([]);
  
  useEffect(() => {
    if (!jobId || !token) return;
    
    const socket = io(LEADGATE_URL, {
      auth: { token }
    });
    
    socket.on('connect', () => {
      console.log('Connected to WebSocket');
      socket.emit('subscribe-job', jobId);
    });
    
    socket.on('job-status', (status) => {
      setJobStatus(status);
    });
    
    socket.on('job-update', (update) => {
      setUpdates(prev => [...prev, update]);
      
      if (update.type === 'progress') {
        setJobStatus(prev => ({
          ...prev,
          progress: update.progress,
          processed_leads: update.processedLeads
        }));
      } else if (update.type === 'complete') {
        setJobStatus(prev => ({
          ...prev,
          status: 'completed',
          ...update.results
        }));
      }
    });
    
    socket.on('error', (error) => {
      console.error('Job error:', error);
    });
    
    return () => {
      socket.emit('unsubscribe-job', jobId);
      socket.disconnect();
    };
  }, [jobId, token]);
  
  return { jobStatus, updates };
}
